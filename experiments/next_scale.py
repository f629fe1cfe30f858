"""Next-scale prediction (VAR) vs raster AR on the same multi-scale tokens of bundled MNIST
-> docs/next_scale.md, section "## Experiment".

  python experiments/next_scale.py                     # full budget (see --steps), resumable
  python experiments/next_scale.py --smoke --workdir /tmp/ns --out /tmp/ns.md   # < 2 min

Stages, each skipped when its result file exists under WORKDIR/results (rerunning the script
resumes an interrupted stage: training from the run's latest checkpoint):

  tokenizer  `configs/next_scale/tokenizer.py` (multi-scale VQ, scales 1,2,3,4,5,7 of a 7x7
             latent, N = 104 tokens of 32 codes) trained by `arjax.train.train_and_evaluate`.
  cache      its tokens of the MNIST train and test splits (`arjax.train.token_cache`, the code of
             `python -m arjax.tokenize`).
  ROW        one generator per entry of `configs/next_scale/compare.py` ROWS (var, raster, and
             any variant added there), all with the same width, depth, batch, optimiser, class
             dropout, steps and sampling settings. Training runs in chunks of --eval_every steps
             (constant learning rate after warm-up, so a chunked run and a longer budget resume
             exactly); after each chunk --progress_samples samples are scored (class accuracy,
             FD) and appended to WORKDIR/ROW/progress.jsonl. At the end: --num_samples balanced
             class-conditional samples scored with the bundled offline MNIST classifier (FD in
             its feature space, not Inception FID; class accuracy) and a sample grid PNG.
  speed      images/s of every row (tokens sampled + decoded to pixels) at batch 1 and at
             --speed_batch, in one process, the rows interleaved call by call
             (benchmarks/common.py time_interleaved); forward passes per image (the order's
             steps) and the KV cache's bytes per image, from the cache's shapes.

A larger budget: rerun with a larger --steps (the rows' JSONs record their steps; a row trained
to fewer steps resumes from its checkpoint). Delete a results/*.json to redo that stage.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import hardware  # noqa: E402  (the platform line of every report)

_log = logging.getLogger("experiments.next_scale")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "configs", "next_scale", "tokenizer.py")
COMPARE = os.path.join(ROOT, "configs", "next_scale", "compare.py")
LABELS = {"var": "VAR (next-scale)", "raster": "raster AR (same tokens)",
          "flexvar": "FlexVAR (non-residual tokens)", "hmar": "HMAR (Markovian + refinement)"}
SECTION = "## Experiment"
BAR = 0.8  # the raster baseline's class accuracy at which the budget counts as enough.


def _module(path, name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def rows_of(requested=""):
  rows = list(_module(COMPARE, "next_scale_compare").ROWS)
  if requested:
    want = [r for r in requested.split(",") if r]
    missing = [r for r in want if r not in rows]
    if missing:
      raise ValueError(f"--rows {missing} not in configs/next_scale/compare.py ROWS {rows}")
    rows = want
  return rows


def flat_rows():
  """Rows on the non-residual tokenizer's tokens (compare.py FLAT: FlexVAR)."""
  return set(getattr(_module(COMPARE, "next_scale_compare"), "FLAT", ()))


def _paths(args, flat=False):
  """flat: the non-residual tokenizer run and its cache (tokenizer_flat, cache_flat)."""
  w, sfx = args.workdir, "_flat" if flat else ""
  return dict(tokenizer=os.path.join(w, "tokenizer" + sfx),
              cache=os.path.join(w, "cache" + sfx, "{split}.array_record"),
              results=os.path.join(w, "results"))


def _tok_spec(args, flat=False):
  a = ["smoke"] if args.smoke else [f"steps={args.tokenizer_steps}"]
  if flat:
    a.append("residual=false")
  return TOKENIZER + ":" + ",".join(a)


def _row_spec(row, args, steps):
  p = _paths(args, row in flat_rows())
  a = [f"model={row}", f"tokenizer={p['tokenizer']}", f"cache={p['cache']}", f"steps={steps}"]
  if args.smoke:
    a.append("smoke")
  return COMPARE + ":" + ",".join(a)


def _rel(spec):
  return spec.replace(ROOT + os.sep, "")


def _read(path):
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return None


def _write(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


# -- stages ----------------------------------------------------------------------------------
def stage_tokenizer(args, flat=False):
  from arjax.config import load_config
  from arjax.train import train_and_evaluate
  name = "tokenizer_flat" if flat else "tokenizer"
  path = os.path.join(_paths(args)["results"], name + ".json")
  done = _read(path)
  if done:
    _log.info("%s: done before (%s)", name, path)
    return done
  config = load_config(_tok_spec(args, flat))
  t0 = time.time()
  final = train_and_evaluate(config, _paths(args, flat)["tokenizer"])
  keep = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
  res = {"config": _rel(_tok_spec(args, flat)), "steps": int(config.train.num_steps),
         "scales": list(config.model.quantizer.scales),
         "residual": bool(config.model.quantizer.get("residual", True)),
         "codebook_size": int(config.model.quantizer.codebook_size),
         "batch_size": int(config.train.batch_size),
         "seconds": time.time() - t0, "metrics": keep}
  _write(path, res)
  _log.info("%s: %s", name, {k: round(v, 4) for k, v in keep.items()})
  return res


def stage_cache(args, flat=False):
  from arjax.train.token_cache import write_token_cache
  p = _paths(args, flat)
  path = os.path.join(p["results"], "cache_flat.json" if flat else "cache.json")
  done = _read(path)
  if done:
    _log.info("cache: done before (%s)", path)
    return done
  os.makedirs(os.path.dirname(p["cache"]), exist_ok=True)
  t0 = time.time()
  summary = write_token_cache(p["tokenizer"], "mnist", p["cache"], ("train", "test"),
                              num_examples=2000 if args.smoke else -1)
  res = {"files": summary["files"], "seconds": time.time() - t0}
  _write(path, res)
  return res


def _scoring_config():
  """What offline_scores reads: the bundled data set's name (the row's data.source is the
  token cache) and a tokenizer without grey levels (samples are full 28x28 pixels)."""
  import ml_collections
  return ml_collections.ConfigDict({"data": {"source": "mnist"},
                                    "tokenizer": {"name": "cached"}})


def _score(exp, params, n, batch, seed=0):
  from arjax.evaluate import sample_metrics as sm
  from arjax.sampling import SamplingConfig
  e = exp.config.eval
  sampling = SamplingConfig(cfg_scale=e.cfg_scale, temperature=e.temperature, top_k=e.top_k,
                            top_p=e.top_p)
  t0 = time.time()
  images, labels = sm.generate_samples(exp, params, n, seed=seed, batch_size=batch,
                                       sampling=sampling, progress=False)
  seconds = time.time() - t0
  s = sm.offline_scores(_scoring_config(), images, labels)
  return images, labels, {"fd": float(s["fd"]), "class_accuracy": float(s["class_accuracy"]),
                          "precision": float(s["precision"]), "recall": float(s["recall"]),
                          "sample_seconds": seconds}


def _progress(workdir):
  path = os.path.join(workdir, "progress.jsonl")
  out = []
  if os.path.isfile(path):
    with open(path) as f:
      out = [json.loads(line) for line in f if line.strip()]
  return out


def _targets(args):
  chunk = args.eval_every if args.eval_every > 0 else args.steps
  return list(range(chunk, args.steps, chunk)) + [args.steps]


def train_chunk(row, args, target):
  """Trains `row` to step `target` (resuming its workdir) and scores --progress_samples samples
  (appended to WORKDIR/ROW/progress.jsonl); nothing when that step is already recorded."""
  from arjax.config import load_config
  from arjax.train import train_and_evaluate
  from arjax.train.restore import load_run
  workdir = os.path.join(args.workdir, row)
  if target in {r["step"] for r in _progress(workdir)}:
    return
  config = load_config(_row_spec(row, args, target))
  _log.info("%s: training to step %d (%s)", row, target, _rel(_row_spec(row, args, target)))
  t0 = time.time()
  final = train_and_evaluate(config, workdir)
  dt = time.time() - t0
  exp, state, step = load_run(workdir, check_data=False)
  _, _, s = _score(exp, exp.eval_params(state), args.progress_samples, args.sample_batch)
  rec = {"step": int(step), "test_bits_per_dim": float(final.get("test_bits_per_dim", "nan")),
         "chunk_seconds": dt, "num_samples": args.progress_samples,
         "params": int(exp.fm.param_count()), "batch_size": int(config.train.batch_size),
         "cfg_scale": float(config.eval.cfg_scale),
         "temperature": float(config.eval.temperature), **s}
  with open(os.path.join(workdir, "progress.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
  _log.info("%s: step %d  bits/token %.4f  class accuracy %.3f  FD %.2f  (%d samples; "
            "chunk %.0fs)", row, step, rec["test_bits_per_dim"], s["class_accuracy"], s["fd"],
            args.progress_samples, dt)


def partial_result(row, args):
  """A row not finished yet, from its last progress record (fewer samples, no grid)."""
  prog = _progress(os.path.join(args.workdir, row))
  if not prog:
    return None
  last = prog[-1]
  return {"row": row, "partial": True, "params": last.get("params", 0),
          "train_steps": last["step"], "batch_size": last.get("batch_size", 0),
          "test_bits_per_token": last["test_bits_per_dim"], "num_samples": last["num_samples"],
          "cfg_scale": last.get("cfg_scale", 0.0), "temperature": last.get("temperature", 1.0),
          "fd": last["fd"], "class_accuracy": last["class_accuracy"],
          "precision": last["precision"], "recall": last["recall"],
          "train_seconds": sum(r["chunk_seconds"] for r in prog), "grid": None,
          "progress": prog}


def partial_grid(row, args, out_dir):
  """A class grid (--grid_per_class samples per class, seed 1) of an unfinished row's latest
  checkpoint, docs/next_scale/ROW_stepN.png: what the section shows until the row finishes."""
  import numpy as np
  from arjax.evaluate.images import save_grid
  from arjax.evaluate import sample_metrics as sm
  from arjax.sampling import SamplingConfig
  from arjax.train.restore import load_run
  exp, state, step = load_run(os.path.join(args.workdir, row), check_data=False)
  e = exp.config.eval
  sampling = SamplingConfig(cfg_scale=e.cfg_scale, temperature=e.temperature, top_k=e.top_k,
                            top_p=e.top_p)
  n = 10 * args.grid_per_class
  images, labels = sm.generate_samples(exp, exp.eval_params(state), n, seed=1, batch_size=n,
                                       sampling=sampling, progress=False)
  png = os.path.join(out_dir, f"{row}_step{step}.png")
  os.makedirs(out_dir, exist_ok=True)
  save_grid(class_rows(images, np.asarray(labels), args.grid_per_class), png,
            ncol=args.grid_per_class, scale=2)
  return png, int(step)


def _budget_step(workdir, args):
  """The checkpoint at --steps when the run holds it (a run carried on to a larger budget
  keeps it among its last checkpoints for a while), else None: the latest."""
  from arjax.loading import resolve_step
  try:
    return resolve_step(workdir, args.steps)
  except FileNotFoundError:
    return None


def finish_row(row, args, out_dir):
  """Final scoring of a row trained to --steps: --num_samples samples and the grid PNG."""
  from arjax.evaluate.images import save_grid
  from arjax.train.restore import load_run
  path = os.path.join(_paths(args)["results"], f"{row}.json")
  done = _read(path)
  if done and done["train_steps"] >= args.steps:
    _log.info("%s: done before at %d steps (%s)", row, done["train_steps"], path)
    return done
  workdir = os.path.join(args.workdir, row)
  exp, state, step = load_run(workdir, _budget_step(workdir, args), check_data=False)
  params = exp.eval_params(state)
  _log.info("%s: scoring %d samples at step %d", row, args.num_samples, step)
  images, labels, s = _score(exp, params, args.num_samples, args.sample_batch, seed=1)
  png = os.path.join(out_dir, f"{row}.png")
  os.makedirs(out_dir, exist_ok=True)
  save_grid(class_rows(images, labels, args.grid_per_class), png, ncol=args.grid_per_class,
            scale=2)
  config = exp.config
  prog = _progress(workdir)
  res = {"row": row, "config": _rel(_row_spec(row, args, args.steps)),
         "model": config.model.name, "params": int(exp.fm.param_count()),
         "train_steps": int(step), "batch_size": int(config.train.batch_size),
         "test_bits_per_token": prog[-1]["test_bits_per_dim"] if prog else None,
         "num_samples": args.num_samples, "cfg_scale": float(config.eval.cfg_scale),
         "temperature": float(config.eval.temperature), **s,
         "train_seconds": sum(r["chunk_seconds"] for r in prog), "grid": png, "progress": prog}
  _write(path, res)
  _write(_kept_path(row, out_dir), res)  # the section can be rewritten without the workdir.
  _log.info("%s: %d samples: class accuracy %.3f  FD %.2f", row, args.num_samples,
            s["class_accuracy"], s["fd"])
  return res


def _kept_path(row, out_dir):
  """Where a finished row's result is kept next to the docs (docs/next_scale/results/ROW.json):
  a later run on another machine (a fresh workdir) writes the section from it."""
  os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
  return os.path.join(out_dir, "results", f"{row}.json")


def kept_result(row, out_dir):
  """A finished row's kept result, its grid read from out_dir; None when there is none."""
  x = _read(os.path.join(out_dir, "results", f"{row}.json"))
  if x and x.get("grid"):
    x["grid"] = os.path.join(out_dir, os.path.basename(x["grid"]))
  return x


def class_rows(images, labels, per_class, num_classes=10):
  """The first `per_class` samples of every class, one row per class (for the grid PNG)."""
  import numpy as np
  idx = [np.where(labels == c)[0][:per_class] for c in range(num_classes)]
  return images[np.concatenate(idx)]


def kv_cache_bytes(model, batch):
  """Bytes of the KV cache a sampler allocates for `batch` rows, from its shapes (no memory)."""
  import jax
  shapes = jax.eval_shape(lambda: model.init_cache(batch))
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)))


def passes_per_image(model):
  """The order's steps, plus HMAR's refinement passes (one per extra count of its schedule)."""
  n = int(model.order.num_steps())
  if hasattr(model, "refine_schedule"):
    n += sum(len(c) - 1 for c in model.refine_schedule(model.order))
  return n


def stage_speed(rows, args):
  """Images/s (tokens sampled and decoded) of every row, interleaved in one process."""
  import jax
  import jax.numpy as jnp
  from benchmarks.common import time_interleaved
  from arjax.evaluate.sample_metrics import balanced_labels
  from arjax.sampling import SamplingConfig
  from arjax.train.restore import load_run
  from arjax.loading import resolve_step
  path = os.path.join(_paths(args)["results"], "speed.json")
  done = _read(path)
  # Sampling cost does not depend on the weights: a measurement at earlier checkpoints of
  # these rows (--speed_only during training) still holds, but is redone at the final ones.
  if done and not args.speed_only and set(rows) <= set(done["rows"]) and all(
      done["rows"][r]["train_steps"] == resolve_step(os.path.join(args.workdir, r),
                                                     _budget_step(os.path.join(args.workdir, r),
                                                                  args))
      for r in rows):
    _log.info("speed: done before (%s)", path)
    return done
  out = {"batches": [1, args.speed_batch], "repeats": args.speed_repeats, "rows": {}}
  fns = {}
  for r in rows:
    w = os.path.join(args.workdir, r)
    exp, state, step = load_run(w, None if args.speed_only else _budget_step(w, args),
                                check_data=False)
    params = exp.eval_params(state)
    e = exp.config.eval
    sampling = SamplingConfig(cfg_scale=e.cfg_scale, temperature=e.temperature,
                              top_k=e.top_k, top_p=e.top_p)
    sampler = exp.sampler(sampling)
    model = exp.fm.bind(params)
    decode = jax.jit(lambda p, t, fm=exp.fm: fm.bind(p).tokenizer.decode(t))
    guided = e.cfg_scale != 1.0
    out["rows"][r] = {
        "train_steps": int(step), "passes_per_image": passes_per_image(model),
        "tokens_per_image": int(model.order.num_tokens()) if callable(
            getattr(model.order, "num_tokens", None)) else int(
                exp.fm.bind(params).tokenizer.tokens_per_image),
        "kv_cache_bytes_per_image": kv_cache_bytes(model, 1),
        "kv_cache_rows_per_image": 2 if guided else 1, "images_per_second": {}}
    for b in out["batches"]:
      labels = jnp.asarray(balanced_labels(b, 10))
      fns[(r, b)] = (lambda s=sampler, p=params, lab=labels, d=decode:
                     d(p, s.sample_tokens(p, lab, jax.random.key(1))))
  for b in out["batches"]:
    sub = {r: fns[(r, b)] for r in rows}
    _log.info("speed: batch %d, %d rows interleaved, %d repeats", b, len(rows),
              args.speed_repeats)
    med = time_interleaved(sub, repeats=args.speed_repeats, warmup=1)
    for r in rows:
      out["rows"][r]["images_per_second"][str(b)] = b / med[r]
  _write(path, out)
  return out


# -- the section -----------------------------------------------------------------------------
def _fmt_bytes(n):
  return f"{n:,} B ({n / 1024:.1f} KiB)"


def section(rows, results, tok, speed, failed, args, hw, load):
  lines = [SECTION, "",
           "Written by `python experiments/next_scale.py" + (" --smoke" if args.smoke else "")
           + f" --steps {args.steps}` (configs `configs/next_scale/tokenizer.py`, "
           "`configs/next_scale/compare.py:model=ROW`). Every row trains on the same token cache "
           "of the same multi-scale tokenizer (FlexVAR: the same recipe with residual=false, its "
           "own run and cache), with the same width, depth, heads, batch, "
           "optimiser, learning rate, class dropout, steps and sampling settings; only the "
           "model and its order differ.", ""]
  if tok:
    m = tok["metrics"]
    lines += [f"Tokenizer: multi-scale residual VQ (VAR's quantizer), scales "
              f"{','.join(map(str, tok['scales']))} of the 7x7 latent (N = "
              f"{sum(s * s for s in tok['scales'])} tokens, {tok['codebook_size']} codes), "
              f"{tok['steps']} steps of batch {tok.get('batch_size', 32)} ({tok['seconds'] / 60:.1f} min); test "
              + ", ".join(f"{name} {m[k]:.3f}" for k, name in TOK_METRICS if k in m)
              + " (first 1000 test images; digit error: the offline classifier reads the "
              "reconstruction as another digit, 0.011 on the originals).", ""]
  tok_flat = _read(os.path.join(_paths(args)["results"], "tokenizer_flat.json"))
  if tok_flat and "flexvar" in rows:
    m = tok_flat["metrics"]
    lines += [f"FlexVAR's tokenizer: the same recipe with `residual=false` (every scale quantized "
              f"on its own from the area-downsampled latent; FlexVAR predicts these), "
              f"{tok_flat['steps']} steps ({tok_flat['seconds'] / 60:.1f} min); test "
              + ", ".join(f"{name} {m[k]:.3f}" for k, name in TOK_METRICS if k in m)
              + " (its reconstruction is the last scale alone).", ""]
  any_r = next(iter(results.values()), None)
  if any_r:
    if any(x.get("partial") for x in results.values()):
      lines += [f"**Partial**: training to {args.steps} steps per row is still under way; rows "
                "marked partial show their last chunk's progress record (its fewer samples, "
                "seed 0, instead of the final scoring's seed 1).", ""]
    lines += [f"Hardware: {hw}, {load}. Budget per row: {any_r['train_steps']} steps of "
              f"{any_r['batch_size']} token maps (constant lr after warm-up). Samples: "
              f"{any_r['num_samples']} balanced class-conditional samples per row (seed "
              f"{0 if any_r.get('partial') else 1}, CFG "
              f"{any_r['cfg_scale']:g} constant at every step, temperature "
              f"{any_r['temperature']:g}, no top-k/top-p), decoded by the tokenizer and scored "
              "with the bundled offline MNIST classifier: FD in its feature space against the "
              "test split (**not** Inception FID; biased upwards at this N, compare rows only "
              "with each other) and the fraction of samples classified as their class.", ""]
  base = speed["rows"].get("raster") if speed else None
  bs = [str(b) for b in speed["batches"]] if speed else []
  head = ("| model | params | train steps | test bits/token | FD (offline clf.) | class acc. | "
          "forward passes / image | " + " | ".join(f"images/s @ batch {b}" for b in bs)
          + (" | " if bs else "") + "KV cache / image | train wall | samples |")
  cols = head.count("|") - 1
  lines += [head, "|" + "---|" * cols]
  for r in rows:
    name = LABELS.get(r, r)
    if r not in results:
      lines.append(f"| {name} | " + " | ".join(["—"] * (cols - 2))
                   + f" | not run: {failed.get(r, '?')} |")
      continue
    x = results[r]
    sp = speed["rows"].get(r) if speed else None
    cells = [name, f"{x['params']:,}", str(x["train_steps"]),
             "—" if x["test_bits_per_token"] is None else f"{x['test_bits_per_token']:.4f}",
             f"{x['fd']:.2f}", f"{x['class_accuracy']:.3f}",
             str(sp["passes_per_image"]) if sp else "—"]
    for b in bs:
      if sp:
        v = sp["images_per_second"][b]
        rel = (f" ({v / base['images_per_second'][b]:.1f}x raster)"
               if base and r != "raster" else "")
        cells.append(f"{v:.1f}{rel}")
      else:
        cells.append("—")
    cells.append(_fmt_bytes(sp["kv_cache_bytes_per_image"]) +
                 (" x2 (CFG)" if sp["kv_cache_rows_per_image"] == 2 else "") if sp else "—")
    cells.append(f"{x['train_seconds'] / 60:.1f} min")
    part = (f"partial: last progress record ({x['num_samples']} samples)"
            if x.get("partial") else "")
    if x.get("grid"):
      rel_png = os.path.relpath(x["grid"], os.path.dirname(os.path.abspath(args.out)))
      cells.append(f"[grid]({rel_png})" + (f"; {part}" if part else ""))
    else:
      cells.append(part or "—")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if speed:
    lines += [f"images/s: tokens sampled with the KV cache and decoded to 28x28 pixels, median "
              f"of {speed['repeats']} calls per row and batch, the rows interleaved call by call "
              "in one process (benchmarks/common.py `time_interleaved`) so that the shared "
              "machine's load hits them alike; compilation excluded. KV cache: keys and values "
              "of every layer for every token slot, float32, from the cache's shapes "
              "(`init_cache`), per image; classifier-free guidance doubles the rows. Timed at the "
              "checkpoints of steps " + ", ".join(f"{LABELS.get(r, r)} {v['train_steps']}"
                                                 for r, v in speed["rows"].items())
              + " (sampling cost does not depend on the weights).", ""]
  # The claims.
  claims = []
  if "raster" in results:
    acc = results["raster"]["class_accuracy"]
    claims.append((f"raster baseline's samples classified correctly >= {BAR:.0%} (the budget "
                   "bar)", f"{acc:.3f} at {results['raster']['train_steps']} steps",
                   "met" if acc >= BAR else "not yet met"))
  if speed and base:
    for r in rows:
      sp = speed["rows"].get(r)
      if r == "raster" or not sp:
        continue
      claims.append((f"{LABELS.get(r, r)}: few passes instead of N",
                     f"{sp['passes_per_image']} passes vs raster's {base['passes_per_image']} "
                     f"({base['passes_per_image'] / sp['passes_per_image']:.1f}x fewer)",
                     "holds" if sp["passes_per_image"] <= 10 else "does not hold"))
      ratios = {b: sp["images_per_second"][b] / base["images_per_second"][b] for b in bs}
      claims.append((f"{LABELS.get(r, r)}: faster sampling (images/s ratio vs raster)",
                     ", ".join(f"{ratios[b]:.1f}x at batch {b}" for b in bs),
                     "holds" if all(v > 1 for v in ratios.values()) else "does not hold"))
      if r in results and "raster" in results:
        a, b_ = results[r], results["raster"]
        claims.append((f"{LABELS.get(r, r)}: quality at least raster's at equal budget",
                       f"FD {a['fd']:.2f} vs {b_['fd']:.2f}, class accuracy "
                       f"{a['class_accuracy']:.3f} vs {b_['class_accuracy']:.3f}",
                       "holds" if (a["fd"] <= b_["fd"] and
                                   a["class_accuracy"] >= b_["class_accuracy"]) else
                       ("mixed" if (a["fd"] <= b_["fd"]) != (
                           a["class_accuracy"] >= b_["class_accuracy"]) else "does not hold")))
  if claims:
    lines += ["| claim | measured | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | {v} |" for c, m, v in claims]
    lines.append("")
  prog_rows = [r for r in rows if r in results and results[r]["progress"]]
  if prog_rows:
    lines += ["Progress during training (class accuracy / FD of "
              f"{results[prog_rows[0]]['progress'][0]['num_samples']} samples, seed 0, after "
              "each chunk; WORKDIR/ROW/progress.jsonl):", "",
              "| step | " + " | ".join(LABELS.get(r, r) for r in prog_rows) + " |",
              "|---|" + "---|" * len(prog_rows)]
    steps = sorted({p["step"] for r in prog_rows for p in results[r]["progress"]})
    for s in steps:
      cells = []
      for r in prog_rows:
        p = [q for q in results[r]["progress"] if q["step"] == s]
        cells.append(f"{p[0]['class_accuracy']:.3f} / {p[0]['fd']:.1f}" if p else "—")
      lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
  if failed:
    lines += ["Not run: " + "; ".join(f"{LABELS.get(r, r)}: {m}" for r, m in failed.items()), ""]
  grids = [r for r in rows if r in results and results[r].get("grid")]
  if grids:
    here = os.path.dirname(os.path.abspath(args.out))
    lines += ["Sample grids (a row per class 0-9):", "",
              "| " + " | ".join(LABELS.get(r, r) + (
                  f" (step {results[r]['grid_step']}, seed 1)" if results[r].get("grid_step")
                  else "") for r in grids) + " |",
              "|" + "---|" * len(grids),
              "| " + " | ".join(f"![]({os.path.relpath(results[r]['grid'], here)})"
                                for r in grids) + " |", ""]
  return lines


TOK_METRICS = (("test_psnr", "PSNR (dB)"), ("test_ssim", "SSIM"),
               ("test_reconstruction_fd", "reconstruction FD"),
               ("test_recognition_error", "digit error"), ("test_codebook_usage", "code usage"))
NOTES_MARKER = "<!-- notes: kept when experiments/next_scale.py rewrites this section -->"


def write_section(path, lines):
  """Replaces the '## Experiment' section of `path` (up to the next '## ' heading), keeping every
  other section (e.g. '## Models') and any hand-written notes below NOTES_MARKER inside it."""
  old = ""
  if os.path.isfile(path):
    with open(path) as f:
      old = f.read()
  body = "\n".join(lines).rstrip("\n") + "\n"
  if SECTION + "\n" in old:
    a = old.index(SECTION + "\n")
    nxt = old.find("\n## ", a + len(SECTION))
    e = len(old) if nxt < 0 else nxt + 1
    mine = old[a:e]
    if NOTES_MARKER in mine:
      body += "\n" + mine[mine.index(NOTES_MARKER):].rstrip("\n") + "\n"
    new = old[:a] + body + ("\n" + old[e:] if e < len(old) else "")
  elif old:
    new = old.rstrip("\n") + "\n\n" + body
  else:
    new = "# Next-scale prediction\n\n" + body
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(new)
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="tiny models and budgets (< 2 min)")
  p.add_argument("--rows", default="", help="comma-separated subset of compare.py's ROWS")
  p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "next_scale"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "next_scale.md"))
  p.add_argument("--tokenizer_steps", type=int, default=600)
  p.add_argument("--steps", type=int, default=3000, help="generator training steps per row")
  p.add_argument("--eval_every", type=int, default=1000,
                 help="chunk length: progress samples scored after each (0: at the end only)")
  p.add_argument("--progress_samples", type=int, default=200)
  p.add_argument("--num_samples", type=int, default=1000, help="final samples per row (> 128)")
  p.add_argument("--sample_batch", type=int, default=100)
  p.add_argument("--grid_per_class", type=int, default=10)
  p.add_argument("--speed_batch", type=int, default=20)
  p.add_argument("--speed_repeats", type=int, default=5)
  p.add_argument("--load", default="", help="the machine's load, stated in the section")
  p.add_argument("--speed_only", action="store_true",
                 help="train nothing: time sampling at the rows' latest checkpoints (sampling "
                      "cost does not depend on the weights), then write the section")
  p.add_argument("--partial_grids", action="store_true",
                 help="with --report_only / --speed_only: sample grids of unfinished rows' "
                      "latest checkpoints (docs/next_scale/ROW_stepN.png)")
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: the section from the results already written")
  args = p.parse_args(argv)
  if args.smoke:
    args.tokenizer_steps = 4
    args.steps = min(args.steps, 4)
    args.eval_every, args.progress_samples = 0, 130  # one chunk: fewer compiles.
    args.num_samples, args.sample_batch, args.grid_per_class = 130, 65, 4
    args.speed_batch, args.speed_repeats = 4, 1
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter.
  rows = rows_of(args.rows)
  res_dir = _paths(args)["results"]
  os.makedirs(res_dir, exist_ok=True)
  out_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                         os.path.splitext(os.path.basename(args.out))[0])
  tok = _read(os.path.join(res_dir, "tokenizer.json"))
  results, failed = {}, {}
  load = lambda: args.load or "load average %.1f when written" % os.getloadavg()[0]
  report = lambda speed=None: write_section(args.out, section(
      rows, results, tok, speed, failed, args, hardware(), load()))
  if not (args.report_only or args.speed_only):
    tok = stage_tokenizer(args)
    stage_cache(args)
    if set(rows) & flat_rows():  # FlexVAR's non-residual tokens: a second tokenizer and cache.
      tok_flat = stage_tokenizer(args, flat=True)
      stage_cache(args, flat=True)
    # Chunk by chunk, every row in turn: the rows always stand at (about) the same budget, and
    # the section is rewritten after each round with what is there.
    for target in _targets(args):
      for r in rows:
        if r in failed:
          continue
        try:
          train_chunk(r, args, target)
        except Exception as e:  # noqa: BLE001  one row's failure must not lose the others.
          import traceback
          traceback.print_exc()
          failed[r] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        x = partial_result(r, args)
        if x:
          results[r] = x
      report()
    for r in rows:
      if r not in failed:
        try:
          results[r] = finish_row(r, args, out_dir)
        except Exception as e:  # noqa: BLE001
          import traceback
          traceback.print_exc()
          failed[r] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  else:
    for r in rows:
      x = _read(os.path.join(res_dir, f"{r}.json")) or kept_result(r, out_dir)
      x = x or partial_result(r, args)
      if x:
        results[r] = x
        if x.get("partial") and args.partial_grids:
          x["grid"], x["grid_step"] = partial_grid(r, args, out_dir)
        elif x.get("partial"):  # the newest grid an earlier --partial_grids wrote.
          import glob
          import re
          found = sorted((int(re.search(r"_step(\d+)\.png$", g).group(1)), g)
                         for g in glob.glob(os.path.join(out_dir, f"{r}_step*.png")))
          if found:
            x["grid_step"], x["grid"] = found[-1]
      else:
        failed[r] = "no results yet"
  speed = None
  done = [r for r in rows if r in results and not results[r].get("partial")]
  if args.speed_only:
    speed = stage_speed([r for r in rows if r in results], args)
  elif done and not args.report_only:
    speed = stage_speed(done, args)
  else:
    speed = _read(os.path.join(res_dir, "speed.json"))
  path = report(speed)
  _log.info("wrote %s", path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
