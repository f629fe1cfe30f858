"""Generation orders at equal backbone and step budget on bundled MNIST -> docs/orders.md.

  python experiments/orders.py                       # every registered order, ~40 min on 2 CPUs
  python experiments/orders.py --smoke --orders raster,masked --workdir /tmp/o --out /tmp/o.md

For each order registered in `arjax.orders` (plus any a model module registers, e.g. 'arpg'):
trains `configs/orders/compare.py:order=NAME` with `arjax.train.train_and_evaluate` (same
backbone, batch, steps and optimiser for every order), evaluates test bits/dim (the trainer's
evaluation), draws `--num_samples` balanced class-conditional samples with the sampler the
order needs (`build_sampler`), scores them with the offline MNIST classifier (FD in its feature
space, class accuracy, precision/recall; not Inception FID), and writes a sample grid PNG.
Then it times sampling of every trained order in one process, interleaved round by round, so
that the machine's load (shared CPU) hits every order alike, and writes the table.

Resumable: WORKDIR/results/ORDER.json is written when an order is done and a re-run skips it
(training itself also resumes from the order's latest checkpoint). Delete the JSON to redo.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import hardware  # noqa: E402  (the platform line of every report)

_log = logging.getLogger("experiments.orders")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "orders", "compare.py")
# Rows in the papers' order; orders found only in the registry follow, sorted.
PREFERRED = ("raster", "random", "randar", "arpg", "lpd", "par", "nar", "masked")
LABELS = {"raster": "raster (LlamaGen)", "random": "RAR (random, annealed)", "randar": "RandAR",
          "arpg": "ARPG", "lpd": "LPD", "par": "PAR", "nar": "NAR",
          "masked": "MaskGIT (masked, cosine)"}
# Orders whose test NLL is a likelihood of the image (a product of conditionals along an
# order). The masked loss is the cross-entropy of a random masked subset given the rest: no
# factorisation of p(x), so no bits/dim.
NOTES_MARKER = "<!-- notes: kept when experiments/orders.py rewrites this file -->"
NO_NLL = {"masked": "masked-token cross-entropy at a random mask ratio, not a likelihood"}


def _spec(order: str, args) -> str:
  a = [f"order={order}"]
  if args.smoke:
    a.append("smoke")
  if args.steps:
    a.append(f"steps={args.steps}")
  return CONFIG + ":" + ",".join(a)


def _config_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location("orders_compare_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def discover_orders(requested=None):
  """Orders to run, from the registry (importing the models lets them register theirs)."""
  import arjax.models  # noqa: F401  (model modules may register orders, e.g. 'arpg')
  from arjax.orders import ORDERS
  names = list(ORDERS.names())
  if requested:
    missing = [o for o in requested if o not in names]
    if missing:
      raise ValueError(f"--orders {missing} not registered; registered: {names}")
    names = list(requested)
  rank = {n: i for i, n in enumerate(PREFERRED)}
  return sorted(names, key=lambda n: (rank.get(n, len(PREFERRED)), n))


def class_rows(images, labels, per_class: int, num_classes: int = 10):
  """The first `per_class` samples of every class, one row per class (for the grid PNG)."""
  import numpy as np
  idx = [np.where(labels == c)[0][:per_class] for c in range(num_classes)]
  return images[np.concatenate(idx)]


def run_order(order: str, args, out_dir: str):
  """Trains, samples and scores one order; returns its results dict (also written as JSON)."""
  from arjax.config import load_config
  from arjax.evaluate import sample_metrics as sm
  from arjax.evaluate.images import save_grid
  from arjax.sampling import SamplingConfig
  from arjax.train import train_and_evaluate
  from arjax.train.restore import load_run

  config = load_config(_spec(order, args))
  workdir = os.path.join(args.workdir, order)
  t0 = time.time()
  trained = train_and_evaluate(config, workdir)
  train_s = time.time() - t0
  exp, state, step = load_run(workdir)
  params = exp.eval_params(state)
  model = exp.fm.bind(params)
  sampling = SamplingConfig(cfg_scale=config.eval.cfg_scale, temperature=1.0)
  t0 = time.time()
  images, labels = sm.generate_samples(exp, params, args.num_samples, seed=0,
                                       batch_size=args.sample_batch, sampling=sampling)
  sample_s = time.time() - t0
  scores = sm.offline_scores(exp.config, images, labels)
  png = os.path.join(out_dir, f"{order}.png")
  save_grid(class_rows(images, labels, args.grid_per_class), png, ncol=args.grid_per_class,
            scale=2)
  res = {
      "order": order, "config": _spec(order, args).replace(ROOT + os.sep, ""),
      "params": int(exp.fm.param_count()), "train_steps": int(step),
      "batch_size": int(config.train.batch_size),
      "test_bits_per_dim": float(trained["test_bits_per_dim"]),
      "test_examples": int(config.eval.num_examples),
      "nll_defined": order not in NO_NLL,
      "sampling_steps": int(model.order.num_steps()),
      "sampler": type(_sampler(exp, sampling)).__name__,
      "num_samples": int(args.num_samples), "cfg_scale": float(sampling.cfg_scale),
      "temperature": float(sampling.temperature),
      "fd": float(scores["fd"]), "class_accuracy": float(scores["class_accuracy"]),
      "precision": float(scores["precision"]), "recall": float(scores["recall"]),
      "train_seconds": train_s, "sample_seconds": sample_s, "grid": png,
  }
  return res


def real_reference(args):
  """FD / accuracy of `num_samples` real *training* images seen as the model sees them (14x14,
  8 levels) against the test reference: the floor that FD reaches at this N (it is biased
  upwards at small N), so that the rows can be read against it."""
  import numpy as np
  from arjax.config import load_config
  from arjax.data.idx import load_bundled
  from arjax.evaluate import sample_metrics as sm
  config = load_config(_spec("raster", args))
  images, labels = load_bundled(config.data.source, "train")
  idx = np.concatenate([np.where(labels == c)[0][:-(-args.num_samples // 10)]
                        for c in range(10)])[:args.num_samples]
  size = (config.tokenizer.resolution,) * 2
  seen = sm.as_model_sees(np.asarray(images[idx]), config, size)
  s = sm.offline_scores(config, seen, np.asarray(labels[idx]))
  return {"num_samples": int(len(idx)), "fd": float(s["fd"]),
          "class_accuracy": float(s["class_accuracy"]), "precision": float(s["precision"]),
          "recall": float(s["recall"])}


def _sampler(exp, sampling):
  from arjax.sampling import build_sampler
  return build_sampler(exp.fm, sampling, exp.config)


def measure_speed(orders, args):
  """samples/s of every order, timed in one process round by round (interleaved)."""
  import jax
  import numpy as np
  from arjax.evaluate.sample_metrics import balanced_labels
  from arjax.sampling import SamplingConfig
  from arjax.train.restore import load_run

  labels = jax.numpy.asarray(balanced_labels(args.speed_batch, 10))
  runs = {}
  for o in orders:
    exp, state, _ = load_run(os.path.join(args.workdir, o))
    params = exp.eval_params(state)
    sampler = _sampler(exp, SamplingConfig(cfg_scale=exp.config.eval.cfg_scale))
    fn = lambda key, s=sampler, p=params: s.sample_tokens(p, labels, key)
    jax.block_until_ready(fn(jax.random.key(0)))  # compile outside the timing.
    runs[o] = fn
    _log.info("speed: %s compiled", o)
  times = {o: [] for o in orders}
  for r in range(args.speed_rounds):
    for o in orders:
      t0 = time.perf_counter()
      jax.block_until_ready(runs[o](jax.random.key(r + 1)))
      times[o].append(time.perf_counter() - t0)
    _log.info("speed round %d/%d: %s", r + 1, args.speed_rounds,
              "  ".join(f"{o} {times[o][-1]:.2f}s" for o in orders))
  return {o: {"batch": args.speed_batch, "seconds": times[o],
              "samples_per_second": args.speed_batch / float(np.median(times[o]))}
          for o in orders}


# -- the table -------------------------------------------------------------------------------
def _f(x, fmt):
  return "—" if x is None else format(x, fmt)


def verdicts(results, speed):
  """The papers' claims, checked against the measured rows (None where a row is missing)."""
  r = results
  out = []
  fd_tol, acc_tol = 1.25, 0.05  # "little quality loss": FD within +25 %, accuracy within 5 pts.

  def quality_close(o):
    return (r[o]["fd"] <= fd_tol * r["raster"]["fd"]
            and r[o]["class_accuracy"] >= r["raster"]["class_accuracy"] - acc_tol)

  if "raster" in r and "random" in r:
    a, b = r["random"], r["raster"]
    holds = (a["fd"] <= b["fd"] and a["test_bits_per_dim"] <= b["test_bits_per_dim"])
    out.append(("RAR's annealed random order at least as good as raster at equal budget",
                f"test bits/dim {a['test_bits_per_dim']:.4f} vs {b['test_bits_per_dim']:.4f}, "
                f"FD {a['fd']:.2f} vs {b['fd']:.2f}, class accuracy "
                f"{a['class_accuracy']:.3f} vs {b['class_accuracy']:.3f}",
                "holds" if holds else ("mixed" if (a["fd"] <= b["fd"]) != (
                    a["test_bits_per_dim"] <= b["test_bits_per_dim"]) else "does not hold")))
  if "raster" in r:
    n = r["raster"]["sampling_steps"]
    for o in r:
      if o in ("raster", "random") or r[o]["sampling_steps"] >= n:
        continue
      cut = n / r[o]["sampling_steps"]
      sp = (speed.get(o, {}).get("samples_per_second", 0) /
            speed["raster"]["samples_per_second"]) if speed and "raster" in speed else None
      ok = cut >= 4 and quality_close(o)
      why = [] if cut >= 4 else [f"only {cut:.1f}x fewer steps"]
      if not quality_close(o):
        why.append("quality loss beyond the tolerance")
      claim = ("MaskGIT with 8 steps close to raster" if o == "masked" else
               f"{LABELS.get(o, o)} cuts steps >= 4x with little quality loss")
      out.append((claim,
                  f"{n} -> {r[o]['sampling_steps']} steps ({cut:.1f}x), FD {r[o]['fd']:.2f} vs "
                  f"{r['raster']['fd']:.2f}, accuracy {r[o]['class_accuracy']:.3f} vs "
                  f"{r['raster']['class_accuracy']:.3f}" +
                  ("" if sp is None else f", samples/s {sp:.2f}x raster"),
                  "holds" if ok else "does not hold (" + "; ".join(why) + ")"))
  return out, (fd_tol, acc_tol)


def write_table(path, orders, results, speed, failed, args, hw, wall_s=None, real=None):
  rows = []
  head = ("| order | params | train steps | test NLL (bits/dim) | FD (offline clf.) | class acc. "
          "| precision / recall | sampling steps | samples/s vs raster | samples |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n")
  base = speed.get("raster", {}).get("samples_per_second") if speed else None
  for o in orders:
    name = LABELS.get(o, o)
    if o not in results:
      rows.append(f"| {name} | — | — | — | — | — | — | — | — | not run: {failed.get(o, '?')} |")
      continue
    r = results[o]
    nll = f"{r['test_bits_per_dim']:.4f}" if r["nll_defined"] else f"— ({NO_NLL[o]})"
    sp = speed.get(o, {}).get("samples_per_second") if speed else None
    rel = f"{sp / base:.2f}x ({sp:.1f}/s)" if sp and base else "—"
    rel_png = os.path.relpath(r["grid"], os.path.dirname(os.path.abspath(path)))
    rows.append(f"| {name} | {r['params']:,} | {r['train_steps']} | {nll} | {r['fd']:.2f} | "
                f"{r['class_accuracy']:.3f} | {r['precision']:.2f} / {r['recall']:.2f} | "
                f"{r['sampling_steps']} | {rel} | [grid]({rel_png}) |")
  if real:
    rows.append(f"| *real training images* (calibration) | — | — | — | {real['fd']:.2f} | "
                f"{real['class_accuracy']:.3f} | {real['precision']:.2f} / {real['recall']:.2f} | "
                f"— | — | {real['num_samples']} images, 14x14, 8 levels |")
  any_r = next(iter(results.values()), None)
  lines = ["# Generation orders at equal budget (bundled MNIST, 14x14 tokens, 8 grey levels)",
           "",
           "Written by `python experiments/orders.py" + (" --smoke" if args.smoke else "") +
           "` (configs: `configs/orders/compare.py:order=NAME`). Every order trains the same "
           "`ordered_ar` backbone with the same batch, steps, optimiser and seed through "
           "`arjax.train.train_and_evaluate`; only the layout the order gives the backbone "
           "changes (and RAR's target-aware position table, its only extra parameters).", ""]
  if any_r:
    lines += [f"Hardware: {hw}. Training: {any_r['train_steps']} steps of "
              f"{any_r['batch_size']} images per order. Test NLL: the first "
              f"{any_r['test_examples']} test images. Samples: {any_r['num_samples']} balanced "
              f"class-conditional samples per order (seed 0, CFG {any_r['cfg_scale']:g}, "
              f"temperature {any_r['temperature']:g}, no top-k/top-p), scored in the bundled "
              "offline MNIST classifier's feature space (FD is **not** Inception FID; at this N "
              "FD is biased upwards and noisy, compare rows only with each other). "
              + (f"Speed: {args.speed_batch} samples per call, median of {args.speed_rounds} "
                 "rounds in one process, orders interleaved within each round."
                 if speed else "Speed: not measured in this run."), ""]
  lines += [head + "\n".join(rows), ""]
  lines += ["Test NLL is the mean over all tokens of the order's training factorisation: raster "
            "order for raster and RAR (RAR evaluates in raster order, where its annealing ends); "
            "one random order per image for RandAR; for LPD and PAR the group factorisation "
            "(the tokens of a group predicted independently given earlier groups), which is a "
            "likelihood of the parallel model but a looser one than a one-token-per-step "
            "order. Raster and RAR sample with the KV-cached sequential sampler; every other "
            "order with `OrderSampler`, which recomputes the whole layout at every step (no "
            "KV cache), so its samples/s understates what a cached parallel sampler reaches.",
            ""]
  v, (fd_tol, acc_tol) = verdicts(results, speed)
  if v:
    lines += ["## The papers' claims at this scale", "",
              f"\"Little quality loss\" is taken as FD at most {fd_tol:g}x raster's and class "
              f"accuracy at most {acc_tol:g} below raster's; all at the budget above, far below "
              "the papers' (hundreds of epochs, 100M+ parameters).", "",
              "| claim | measured | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | {verdict} |" for c, m, verdict in v]
    lines.append("")
  if results:
    lines += ["Wall time per order on the shared CPU (training includes compilation and the "
              "test-NLL pass; sampling is the FD samples): " + "; ".join(
                  f"{LABELS.get(o, o)} {r['train_seconds'] / 60:.1f} + "
                  f"{r['sample_seconds'] / 60:.1f} min" for o, r in results.items()) + ".", ""]
  if failed:
    lines += ["## Not run", ""] + [f"- {LABELS.get(o, o)}: {msg}" for o, msg in failed.items()]
    lines.append("")
  # Hand-written reading of the results (below NOTES_MARKER) survives a re-run.
  if os.path.isfile(path):
    with open(path) as f:
      old = f.read()
    if NOTES_MARKER in old:
      lines.append(old[old.index(NOTES_MARKER):].rstrip("\n"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="tiny models, a couple of steps")
  p.add_argument("--orders", default="", help="comma-separated subset (default: all registered)")
  p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "orders"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "orders.md"))
  p.add_argument("--steps", type=int, default=0, help="training steps (default: the config's)")
  p.add_argument("--num_samples", type=int, default=200, help="samples per order for FD (> 128)")
  p.add_argument("--sample_batch", type=int, default=100)
  p.add_argument("--grid_per_class", type=int, default=8)
  p.add_argument("--speed_batch", type=int, default=20)
  p.add_argument("--speed_rounds", type=int, default=3, help="0: no speed column")
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: the table from the results JSON already written")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                      datefmt="%H:%M:%S")
  t_start = time.time()
  UNSUPPORTED = _config_module().UNSUPPORTED

  orders = discover_orders([o for o in args.orders.split(",") if o] or None)
  out_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                         os.path.splitext(os.path.basename(args.out))[0])
  res_dir = os.path.join(args.workdir, "results")
  os.makedirs(res_dir, exist_ok=True)
  results, failed = {}, {}
  for i, o in enumerate(orders):
    path = os.path.join(res_dir, f"{o}.json")
    if o in UNSUPPORTED:
      failed[o] = UNSUPPORTED[o]
      _log.info("[%d/%d] %s: skipped (%s)", i + 1, len(orders), o, failed[o])
      continue
    if os.path.isfile(path):
      with open(path) as f:
        results[o] = json.load(f)
      _log.info("[%d/%d] %s: done before (%s), skipped", i + 1, len(orders), o, path)
      continue
    if args.report_only:
      failed[o] = "not run (no results JSON; --report_only)"
      continue
    _log.info("[%d/%d] %s: training %s", i + 1, len(orders), o, _spec(o, args))
    try:
      results[o] = run_order(o, args, out_dir)
    except Exception as e:  # noqa: BLE001  one order's failure must not lose the others.
      traceback.print_exc()
      failed[o] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      _log.error("[%d/%d] %s failed: %s", i + 1, len(orders), o, failed[o])
      continue
    with open(path, "w") as f:
      json.dump(results[o], f, indent=2)
    r = results[o]
    _log.info("[%d/%d] %s: bits/dim %.4f  FD %.2f  acc %.3f  (%.0fs train, %.0fs sampling)",
              i + 1, len(orders), o, r["test_bits_per_dim"], r["fd"], r["class_accuracy"],
              r["train_seconds"], r["sample_seconds"])
  speed = {}
  done = [o for o in orders if o in results]
  speed_path = os.path.join(res_dir, "speed.json")
  if args.report_only and os.path.isfile(speed_path):
    with open(speed_path) as f:
      speed = json.load(f)
    if set(done) <= set(speed):  # measured together before: keep those figures.
      speed = {o: speed[o] for o in done}
      args.speed_batch = next(iter(speed.values()))["batch"]
      args.speed_rounds = len(next(iter(speed.values()))["seconds"])
      _log.info("speed: reusing %s", speed_path)
      done = []
    else:
      speed = {}
  if done and args.speed_rounds > 0:
    _log.info("timing sampling of %s, interleaved", done)
    speed = measure_speed(done, args)
    with open(speed_path, "w") as f:
      json.dump(speed, f, indent=2)
  real_path, real = os.path.join(res_dir, "real.json"), None
  if os.path.isfile(real_path):
    with open(real_path) as f:
      real = json.load(f)
  if results and (real is None or real["num_samples"] != args.num_samples):
    real = real_reference(args)
    with open(real_path, "w") as f:
      json.dump(real, f, indent=2)
  table = write_table(args.out, orders, results, speed, failed, args, hardware(),
                      time.time() - t_start, real)
  _log.info("wrote %s", table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
