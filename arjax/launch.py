"""python -m arjax.launch --num_processes N [--devices_per_process D] [--port P] -- COMMAND ...

Starts N copies of COMMAND on this machine as one `jax.distributed` job over localhost, e.g.

  python -m arjax.launch --num_processes 2 --devices_per_process 4 -- \
      python -m arjax.train --config configs/quickstart.py:smoke --workdir /tmp/run

Each copy gets ARJAX_COORDINATOR=127.0.0.1:PORT, ARJAX_NUM_PROCESSES=N and ARJAX_PROCESS_ID=i,
which `arjax.parallel.maybe_initialize_distributed` (called first thing by the trainer) turns
into `jax.distributed.initialize`. With --platform cpu (the default) each process gets D fake
CPU devices (XLA_FLAGS) and gloo CPU collectives, so N x D devices form one global mesh: the
same code path as a TPU pod or a multi-GPU host, testable on a laptop. Process 0's output is
shown as is, the others' prefixed with "[i] ". SIGINT/SIGTERM are forwarded to every process;
if one process fails the others are stopped, and the launcher exits with the first failure's
status (0 when all succeed).

On real clusters (TPU pods, SLURM) do not use this: jax.distributed finds the coordinator on
its own there.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys

from arjax import cli
import threading
import time
from typing import Dict, List, Optional, Sequence


def free_port() -> int:
  try:
    import portpicker
    return portpicker.pick_unused_port()
  except ImportError:  # portpicker is a test dependency; a bound-and-released port also works.
    import socket
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      return s.getsockname()[1]


def process_env(base: Dict[str, str], *, process_id: int, num_processes: int, port: int,
                devices_per_process: int, platform: str) -> Dict[str, str]:
  """The environment of process `process_id` of the job."""
  env = dict(base)
  env["ARJAX_COORDINATOR"] = f"127.0.0.1:{port}"
  env["ARJAX_NUM_PROCESSES"] = str(num_processes)
  env["ARJAX_PROCESS_ID"] = str(process_id)
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = (flags.strip() + " --xla_force_host_platform_device_count="
                        f"{devices_per_process}").strip()
  return env


def _pump(stream, out, prefix: str):
  for line in iter(stream.readline, b""):
    out.write(prefix.encode() + line if prefix else line)
    out.flush()


def launch(command: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           port: Optional[int] = None, platform: str = "cpu", env: Optional[Dict[str, str]] = None,
           timeout: Optional[float] = None) -> int:
  """Runs `command` as `num_processes` processes of one jax.distributed job; returns the status.

  The status is 0 when every process exits 0, else the first nonzero status seen (a process
  killed by signal S gives -S). The others are then sent SIGTERM, and SIGKILL after 30 s.
  """
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes}; expected >= 1")
  if devices_per_process < 1:
    raise ValueError(f"--devices_per_process={devices_per_process}; expected >= 1")
  if not command:
    raise ValueError("no command to launch: put it after '--'")
  port = port or free_port()
  base = dict(os.environ if env is None else env)
  procs: List[subprocess.Popen] = []
  pumps = []
  out = sys.stdout.buffer
  for i in range(num_processes):
    penv = process_env(base, process_id=i, num_processes=num_processes, port=port,
                       devices_per_process=devices_per_process, platform=platform)
    p = subprocess.Popen(list(command), env=penv, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(p.stdout, out, "" if i == 0 else f"[{i}] "),
                         daemon=True)
    t.start()
    pumps.append(t)

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGINT, signal.SIGTERM):
      old[s] = signal.signal(s, forward)
  status = 0
  deadline = None if timeout is None else time.time() + timeout
  try:
    running = set(range(num_processes))
    while running:
      for i in sorted(running):
        rc = procs[i].poll()
        if rc is None:
          continue
        running.discard(i)
        if rc != 0 and status == 0:
          status = rc
          print(f"arjax.launch: process {i} exited with status {rc}; stopping the others",
                file=sys.stderr, flush=True)
          _stop([procs[j] for j in running])
      if deadline is not None and time.time() > deadline and running:
        print(f"arjax.launch: timeout after {timeout}s; stopping all processes",
              file=sys.stderr, flush=True)
        _stop([procs[j] for j in running])
        status = status or 124
      time.sleep(0.05)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    _stop([p for p in procs if p.poll() is None])
    for t in pumps:
      t.join(timeout=5)
  return status


def _stop(procs: Sequence[subprocess.Popen], grace: float = 30.0):
  for p in procs:
    if p.poll() is None:
      p.terminate()
  end = time.time() + grace
  for p in procs:
    try:
      p.wait(timeout=max(end - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    raise ValueError("no command: write python -m arjax.launch --num_processes N [...] -- "
                     "COMMAND ...")
  split = argv.index("--")
  parser = cli.ArgumentParser(prog="python -m arjax.launch", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, required=True,
                      help="processes to start (one jax.distributed job)")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="fake CPU devices per process (--platform cpu only)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--platform", default="cpu", choices=("cpu", "native"),
                      help="cpu: fake CPU devices + gloo; native: leave devices to jax")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping all")
  args = parser.parse_args(argv[:split])
  if args.num_processes < 1:
    raise ValueError(f"--num_processes={args.num_processes}; expected an integer >= 1")
  if args.devices_per_process < 1:
    raise ValueError(f"--devices_per_process={args.devices_per_process}; expected an integer >= 1")
  if args.timeout is not None and not args.timeout > 0:
    raise ValueError(f"--timeout={args.timeout}; expected a positive number of seconds")
  if not argv[split + 1:]:
    raise ValueError("no command after '--'")
  return launch(argv[split + 1:], num_processes=args.num_processes,
                devices_per_process=args.devices_per_process, port=args.port or None,
                platform=args.platform, timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(cli.run(main))
