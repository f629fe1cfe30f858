"""Load test of `python -m arjax.serve`: continuous batching vs one request at a time.

  python benchmarks/serve.py                       # quickstart model, 16 clients, 2 x 20 s each
  python benchmarks/serve.py --workdir W --slots 8 --clients 16 --requests 50 --duration 20

Starts two servers on localhost over the same run: `--slots S` (continuous batching) and
`--slots 1` (one request at a time), both with a queue as long as the number of clients, so
a closed loop of clients never fills it. Each phase runs N client threads that send requests
back to back (one image of a random class, PNG answer, a fresh seed each), M at most each, and
start no new request after `--duration` seconds; requests in flight finish and count. Phases
alternate between the two servers (`--repeats` times each) so machine noise hits both.

Prints one markdown row per server: images/s (answered requests / phase wall time), p50 and p99
latency, answered, refused (503) and lost requests. Lost = sent but answered neither 200 nor 503
(connection errors, timeouts, 5xx), which must be 0; at the end both servers get SIGTERM, must
exit 0, and their own count of answered requests must equal the clients' count of 200s.

Without --workdir, the quickstart model (configs/quickstart.py: 4 layers, width 96, 14x14
tokens, CFG 2.0) is trained for 2 steps into --make_workdir (weights do not change the speed).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_workdir(path: str, steps: int) -> str:
  from arjax import loading
  if os.path.isfile(os.path.join(path, "config.json")):
    try:
      loading.resolve_step(path)
      return path
    except FileNotFoundError:
      pass
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from configs.quickstart import get_config
  from arjax.train.loop import train_and_evaluate
  c = get_config()
  c.train.num_steps = steps
  c.train.checkpoint_every = steps
  c.train.batch_size = 8
  c.eval.num_examples = 16
  c.eval.batch_size = 16
  c.eval.samples_per_class = 1
  train_and_evaluate(c, path)
  return path


def start_server(workdir: str, slots: int, queue: int):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "arjax.serve", "--workdir", workdir, "--port",
                           "0", "--slots", str(slots), "--queue", str(queue)], cwd=ROOT, env=env,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  line = proc.stdout.readline()
  if not line.startswith("serving http://"):
    proc.kill()
    raise SystemExit(f"server (slots {slots}) did not start: {line!r}")
  return proc, line.split()[1]


def request(url: str, body: dict, timeout: float):
  """(outcome, seconds): outcome 'ok' (200 with a PNG), 'refused' (503) or 'lost'."""
  data = json.dumps(body).encode()
  req = urllib.request.Request(url + "/generate", data=data, method="POST",
                               headers={"Content-Type": "application/json"})
  t0 = time.perf_counter()
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      ok = r.status == 200 and bool(json.loads(r.read()).get("png"))
      return ("ok" if ok else "lost"), time.perf_counter() - t0
  except urllib.error.HTTPError as e:
    return ("refused" if e.code == 503 else "lost"), time.perf_counter() - t0
  except (OSError, ValueError):
    return "lost", time.perf_counter() - t0


def phase(url: str, clients: int, per_client: int, duration: float, num_classes: int,
          seed0: int, timeout: float):
  """Runs the closed loop; returns (images/s, latencies of answered requests, counts)."""
  stop_at = time.perf_counter() + duration
  counts = {"ok": 0, "refused": 0, "lost": 0}
  latencies = []
  lock = threading.Lock()

  def client(c):
    rng = random.Random(seed0 + c)
    for m in range(per_client):
      if time.perf_counter() >= stop_at:
        return
      body = {"labels": [rng.randrange(num_classes)], "seed": seed0 + c * per_client + m,
              "format": "png"}
      outcome, seconds = request(url, body, timeout)
      with lock:
        counts[outcome] += 1
        if outcome == "ok":
          latencies.append(seconds)

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    list(pool.map(client, range(clients)))
  wall = time.perf_counter() - t0
  return counts["ok"] / wall, latencies, counts, wall


def percentile(xs, q):
  xs = sorted(xs)
  if not xs:
    return float("nan")
  i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
  return xs[i]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=None, help="a trained run (default: --make_workdir)")
  p.add_argument("--make_workdir", default="/tmp/arjax_serve_bench/quickstart")
  p.add_argument("--slots", type=int, default=8)
  p.add_argument("--clients", type=int, default=16)
  p.add_argument("--requests", type=int, default=1000, help="at most M requests per client")
  p.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
  p.add_argument("--repeats", type=int, default=2, help="phases per server")
  p.add_argument("--timeout", type=float, default=300.0, help="client timeout per request (s)")
  args = p.parse_args(argv)

  import jax
  from benchmarks.common import hardware
  workdir = args.workdir or make_workdir(args.make_workdir, steps=2)
  config = json.load(open(os.path.join(workdir, "config.json")))
  num_classes = int(config["model"]["num_classes"])
  servers = {}
  for name, slots in (("continuous", args.slots), ("one-at-a-time", 1)):
    servers[name] = (slots,) + start_server(workdir, slots, queue=args.clients)
  info = {}
  for name, (slots, proc, url) in servers.items():  # one answered request each, untimed.
    if request(url, {"labels": [0], "format": "png"}, args.timeout)[0] != "ok":
      raise SystemExit(f"{name} server did not answer a first request")
    with urllib.request.urlopen(url + "/health") as r:
      info = json.loads(r.read())
  results = {name: {"latencies": [], "counts": {"ok": 0, "refused": 0, "lost": 0}, "rates": []}
             for name in servers}
  seed0 = 0
  for r in range(args.repeats):
    for name, (slots, proc, url) in servers.items():
      rate, lat, counts, wall = phase(url, args.clients, args.requests, args.duration,
                                      num_classes, seed0, args.timeout)
      seed0 += 10 ** 6
      res = results[name]
      res["rates"].append(rate)
      res["latencies"] += lat
      for k in counts:
        res["counts"][k] += counts[k]
      print(f"# repeat {r} {name}: {rate:.2f} images/s over {wall:.1f} s, {counts}",
            file=sys.stderr, flush=True)
  exits = {}
  for name, (slots, proc, url) in servers.items():
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
    tail = proc.stdout.read()
    answered = int(tail.split("stopped: ")[1].split()[0]) if "stopped: " in tail else -1
    exits[name] = (code, answered - 1)  # less the untimed first request.

  model = config["model"]["backbone"]
  print(f"\nhardware: {hardware()}; model: {config['model']['name']} "
        f"{model['num_layers']} layers x width {model['dim']}, "
        f"{info['tokens_per_image']} tokens ({info['token_grid']}), vocabulary "
        f"{info['vocab_size']}, eval.cfg_scale "
        f"{config['eval']['cfg_scale']}; {args.clients} clients, <= {args.requests} requests "
        f"each, {args.duration:.0f} s x {args.repeats} phases per server\n")
  print("| server | slots | images/s (per phase) | p50 latency s | p99 latency s | answered | "
        "refused (503) | lost | exit, answered by server |")
  print("|---|---|---|---|---|---|---|---|---|")
  base = None
  for name, (slots, _, _) in servers.items():
    res = results[name]
    rate = sum(res["rates"]) / len(res["rates"])
    base = base or rate
    c = res["counts"]
    print(f"| {name} | {slots} | {rate:.2f} ({', '.join(f'{x:.2f}' for x in res['rates'])}) | "
          f"{percentile(res['latencies'], 50):.3f} | {percentile(res['latencies'], 99):.3f} | "
          f"{c['ok']} | {c['refused']} | {c['lost']} | {exits[name][0]}, {exits[name][1]} |")
  cont = sum(results["continuous"]["rates"]) / args.repeats
  one = sum(results["one-at-a-time"]["rates"]) / args.repeats
  print(f"\nthroughput ratio continuous / one-at-a-time: {cont / one:.2f}x (goal >= 3x)")
  bad = [n for n in servers if results[n]["counts"]["lost"] or exits[n][0] != 0
         or exits[n][1] != results[n]["counts"]["ok"]]
  if bad:
    print(f"FAILED: lost requests or unclean exit: {bad}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
