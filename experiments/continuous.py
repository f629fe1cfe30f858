"""Continuous vs discrete tokens at one budget on bundled MNIST -> docs/continuous.md.

  nohup python experiments/continuous.py --workdir /work/wt/contexp_runs/main \
      > /work/wt/contexp_runs/main.log 2>&1 &
  python experiments/continuous.py --smoke --workdir /tmp/cont_smoke --out /tmp/cont_smoke/c.md

Stages (each resumable and idempotent: a stage whose WORKDIR/results/STAGE.json exists is
skipped; a training stage left unfinished resumes from its workdir's latest checkpoint):

  tok_kl, tok_vq     the MNIST KL and VQ tokenizers (configs/tokenizers/{kl,vq}.py, 200 steps);
                     --tok_kl / --tok_vq reuse finished tokenizer runs instead.
  cache_kl, cache_vq `arjax.tokenize` token caches of the train and test splits (KL: posterior
                     means x scale factor, 7x7x4 floats; VQ: 7x7 codes of 512).
  train_ROW          configs/continuous/compare.py:row=ROW,steps=S (the same 4-block width-96
                     backbone, batch, optimiser and steps for every row), discrete row first.
  ROW                --num_samples balanced class-conditional samples (seed 0, the row's CFG
                     and temperature; MAR once per --mar_steps count), decoded to 28x28 pixels
                     through the row's tokenizer, scored by the bundled offline MNIST classifier
                     (FD in its feature space, NOT Inception FID; class accuracy; precision /
                     recall) against the test split; samples/s of the timed loop (sampling and
                     decoding, after one warm-up batch that compiles); a class grid PNG.

Then the table (docs/continuous.md by default, the PNGs in docs/continuous/ and the figures in
docs/continuous.json). `--rows` restricts the rows this process trains (two processes may share
one workdir with disjoint rows; the table lists every row with results). `--report_only` writes
the table from the results already there. `--time` times every finished row's sampler (one
batch, sampling + decoding) interleaved in one process (benchmarks/common.py time_interleaved:
results/timing.json); the table's samples/s then come from it. A head's sampling-only fields
(SAMPLING_HEAD_FIELDS: the diffusion head's clip_denoised) are taken from the current config
when a row is sampled, so a sampling fix reaches rows trained before it. A row is a ROWS entry
below plus a `row=` of configs/continuous/compare.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_log = logging.getLogger("experiments.continuous")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "continuous", "compare.py")
# row -> (label, token kind, head). The order is the run order: the discrete baseline decides
# the budget, so it trains first.
ROWS = {
    "discrete": ("raster, categorical (VQ codes)", "discrete (VQ, 512 codes)", "categorical"),
    "flow": ("raster, flow head (NextStep-1 style)", "continuous (KL, 4 ch.)", "flow"),
    "diffusion": ("raster, diffusion head", "continuous (KL, 4 ch.)", "diffusion"),
    "gmm": ("raster, GMM head (GIVT-Causal)", "continuous (KL, 4 ch.)", "gmm"),
    "mar": ("MAR, diffusion head", "continuous (KL, 4 ch.)", "diffusion"),
    "xar": ("xAR, next-token entities, noisy-context flow", "continuous (KL, 4 ch.)",
            "flow (whole network)"),
    "arinar": ("MAR backbone, ARINAR head", "continuous (KL, 4 ch.)", "arinar"),
}
# Head fields that act at sampling only: their values come from the row's current config
# (configs/continuous/compare.py), not from the checkpoint's saved config, so a sampling fix
# applies to rows trained before it (the parameters are the same).
SAMPLING_HEAD_FIELDS = ("clip_denoised",)
BAR = 0.80  # the discrete baseline's class accuracy that makes the comparison meaningful.
NOTES_MARKER = "<!-- notes: kept when experiments/continuous.py rewrites this file -->"


def _load_cfg(spec):
  from arjax.config import load_config
  return load_config(spec)


def _done(res_dir, stage):
  path = os.path.join(res_dir, f"{stage}.json")
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return None


def _mark(res_dir, stage, obj):
  path = os.path.join(res_dir, f"{stage}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)  # a stage counts as done only once its JSON is complete.
  return obj


def stage_tokenizer(kind, args, res_dir):
  """Trains (or resumes) the MNIST tokenizer `kind` ('kl' | 'vq'); -> its workdir."""
  given = getattr(args, f"tok_{kind}")
  if given:
    return given
  workdir = os.path.join(args.workdir, f"tok_{kind}")
  r = _done(res_dir, f"tok_{kind}")
  if r:
    _log.info("tok_%s: done before (%s), skipped", kind, workdir)
    return workdir
  from arjax.train import train_and_evaluate
  spec = os.path.join(ROOT, "configs", "tokenizers", f"{kind}.py") + (":smoke" if args.smoke else "")
  _log.info("tok_%s: training %s in %s", kind, spec, workdir)
  t0 = time.time()
  m = train_and_evaluate(_load_cfg(spec), workdir)
  _mark(res_dir, f"tok_{kind}", {"workdir": workdir, "config": os.path.relpath(spec, ROOT),
                                 "seconds": time.time() - t0,
                                 "metrics": {k: v for k, v in m.items()
                                             if isinstance(v, (int, float))}})
  return workdir


def stage_cache(kind, tok_workdir, args, res_dir):
  """Token cache of the train and test splits; -> the path pattern with '{split}'."""
  pattern = os.path.join(args.workdir, f"mnist_{kind}", "{split}.array_record")
  if _done(res_dir, f"cache_{kind}"):
    _log.info("cache_%s: done before, skipped", kind)
    return pattern
  cmd = [sys.executable, "-m", "arjax.tokenize", "--tokenizer_workdir", tok_workdir,
         "--data", "mnist", "--out", pattern]
  if args.smoke:
    cmd += ["--num_examples", "512"]
  _log.info("cache_%s: %s", kind, " ".join(cmd))
  t0 = time.time()
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  subprocess.run(cmd, check=True, env=env, cwd=ROOT)
  _mark(res_dir, f"cache_{kind}", {"pattern": pattern, "tokenizer": tok_workdir,
                                    "seconds": time.time() - t0})
  return pattern


def spec(row, args, toks):
  a = [f"row={row}", f"steps={args.steps}", f"lr={args.lr}"]
  a += [f"tok_kl={toks['tok_kl']}", f"cache_kl={toks['cache_kl']}",
        f"tok_vq={toks['tok_vq']}", f"cache_vq={toks['cache_vq']}"]
  if args.smoke:
    a.append("tiny")
  return CONFIG + ":" + ",".join(a)


def stage_train(row, args, toks, res_dir):
  r = _done(res_dir, f"train_{row}")
  if r:
    _log.info("train_%s: done before, skipped", row)
    return r
  from arjax.train import train_and_evaluate
  s = spec(row, args, toks)
  workdir = os.path.join(args.workdir, row)
  _log.info("train_%s: %s in %s", row, s, workdir)
  t0 = time.time()
  m = train_and_evaluate(_load_cfg(s), workdir)
  if m.get("preempted"):     # stopped by a signal: checkpointed, resumes on the next run.
    raise RuntimeError(f"train_{row} stopped at step {m.get('step')} (preempted); rerun to resume")
  return _mark(res_dir, f"train_{row}", {
      "row": row, "config": s.replace(ROOT + os.sep, ""), "workdir": workdir,
      "seconds_this_process": time.time() - t0,
      "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float))}})


def _progress(workdir):
  """{step, loss, seconds} of the last logged step of a row's training (None: not started)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  last = None
  with open(path) as f:
    for line in f:
      try:
        d = json.loads(line)
      except ValueError:
        continue
      if "loss" in d and "step" in d:
        last = d
  if last is None:
    return None
  return {"step": int(last["step"]), "loss": float(last["loss"]),
          "steps_per_sec": float(last.get("steps_per_sec", 0.0)),
          "train_seconds": _train_seconds(workdir)}


def class_rows(images, labels, per_class, num_classes=10):
  import numpy as np
  return images[np.concatenate([np.where(labels == c)[0][:per_class] for c in range(num_classes)])]


def _train_seconds(workdir):
  """Wall seconds of training from the trainer's metrics.jsonl ('uptime' of each logged step,
  summed over the processes of a resumed run: uptime restarts with each process)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  total, last = 0.0, 0.0
  with open(path) as f:
    for line in f:
      try:
        u = float(json.loads(line)["uptime"])
      except (ValueError, KeyError, TypeError):
        continue
      if u < last:            # a new process: close the previous segment.
        total += last
      last = u
  return (total + last) or None


def _load_row(row, args):
  """(experiment, step, eval params, config, sampling overrides) of a trained row's workdir; the
  head's SAMPLING_HEAD_FIELDS are the current config's."""
  from arjax.train.loop import Experiment
  from arjax.train.restore import load_run
  exp, state, step = load_run(os.path.join(args.workdir, row), check_data=False)
  params = exp.eval_params(state)
  config = exp.config
  current = _load_cfg(CONFIG + f":row={row}" + (",tiny" if args.smoke else "")).model.head
  overrides = {k: current[k] for k in SAMPLING_HEAD_FIELDS
               if k in current and config.model.head.get(k) != current[k]}
  if overrides:
    config = config.copy_and_resolve_references()
    with config.unlocked():
      for k, v in overrides.items():
        config.model.head[k] = v
    exp = Experiment(config, check_data=False)
    _log.info("%s: sampling with the current config's head fields %s", row, overrides)
  return exp, step, params, config, overrides


def _variants(row, args):
  """MAR's reveal-step counts (one entry each), [None] for the other rows."""
  if row == "mar":
    return [k for k in args.mar_steps if k <= 49] if not args.smoke else [2, 4]
  return [None]


def _variant(config, exp, k):
  """(config, functional model, sampling config, sampler, jitted decode) of one entry."""
  import jax
  from arjax.sampling import build_sampler, sampling_from_config
  from arjax.train.loop import Experiment
  cfg, fm = config, exp.fm
  if k is not None:                  # MAR at another reveal-step count: same params.
    cfg = config.copy_and_resolve_references()
    cfg.order.num_steps = int(k)
    fm = Experiment(cfg, check_data=False).fm
  sampling = sampling_from_config(cfg)
  sampler = build_sampler(fm, sampling, cfg)
  decode = jax.jit(lambda p, t: fm.bind(p).tokenizer.decode(t))
  return cfg, fm, sampling, sampler, decode


def time_rows(rows, args, res_dir, repeats=3):
  """samples/s of every finished row's entries, timed interleaved in this one process
  (benchmarks/common.time_interleaved: one batch of args.batch_size class-conditional samples,
  sampled and decoded, per call; calls alternate between the entries so that the shared CPU's
  load hits all alike; median of `repeats` calls after one warm-up call that compiles)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from arjax.evaluate.sample_metrics import balanced_labels
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  from common import time_interleaved
  fns, load0 = {}, os.getloadavg()[0]
  for row in rows:
    exp, _, params, config, _ = _load_row(row, args)
    for k in _variants(row, args):
      cfg, fm, _, sampler, decode = _variant(config, exp, k)
      labels = jnp.asarray(balanced_labels(args.batch_size, cfg.model.num_classes))
      key = jax.random.key(args.seed)
      name = row if k is None else f"{row}_{k}"
      fns[name] = (lambda s=sampler, d=decode, p=params, lab=labels, kk=key:
                   d(p, s.sample_tokens(p, lab, kk)))
  t0 = time.time()
  med = time_interleaved(fns, repeats=repeats, warmup=1)
  return {"batch_size": args.batch_size, "repeats": repeats, "seconds": time.time() - t0,
          "load_avg_start": load0, "load_avg_end": os.getloadavg()[0],
          "samples_per_s": {k: args.batch_size / v for k, v in med.items()},
          "seconds_per_batch": med}


def evaluate_row(row, args, res_dir, out_dir, peek=False):
  """Samples, scores and grids of a trained row (MAR: one entry per reveal-step count).
  peek: the latest checkpoint of a row still training (its names get a _stepN suffix)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from arjax.evaluate.images import save_grid
  from arjax.evaluate.sample_metrics import balanced_labels, offline_scores

  workdir = os.path.join(args.workdir, row)
  exp, step, params, config, overrides = _load_row(row, args)
  ref = config.copy_and_resolve_references()
  ref.data.source = "mnist"            # the images the tokens were encoded from.
  variants = _variants(row, args)
  h = config.model.head
  head_steps = int(h.get("num_sampling_steps", 1)) if h.name in ("flow", "diffusion") else 1
  tr = _done(res_dir, f"train_{row}") or {}
  out = {"row": row, "label": ROWS[row][0], "tokens": ROWS[row][1], "head": ROWS[row][2],
         "config": tr.get("config"), "params": int(exp.fm.param_count()), "train_steps": int(step),
         "batch_size": int(config.train.batch_size), "lr": float(config.train.lr),
         "train_seconds": _train_seconds(workdir),
         "test_metric": tr.get("metrics", {}).get("test_bits_per_dim"),
         "head_steps": head_steps, "sampling_overrides": overrides, "entries": []}
  for k in variants:
    cfg, fm, sampling, sampler, decode = _variant(config, exp, k)
    n, bs = args.num_samples, args.batch_size
    labels = balanced_labels(n, cfg.model.num_classes)
    key = jax.random.key(args.seed)
    t0 = time.time()
    warm = sampler.sample_tokens(params, jnp.asarray(labels[:bs]), key)
    np.asarray(decode(params, warm))
    first_s = time.time() - t0
    t0, images = time.time(), []
    for b in range(0, n, bs):
      lab = labels[b:b + bs]
      pad = bs - len(lab)              # one compiled shape: pad the last batch.
      lab_p = np.concatenate([lab, np.zeros(pad, np.int32)]) if pad else lab
      tokens = sampler.sample_tokens(params, jnp.asarray(lab_p), jax.random.fold_in(key, b))
      images.append(np.asarray(jax.device_get(decode(params, tokens)))[:len(lab)])
    seconds = time.time() - t0
    images = np.concatenate(images)
    scores = offline_scores(ref, images, labels)
    model = fm.bind(params)
    ar_steps = int(model.layout.num_entities if hasattr(model, "layout")   # xAR: entities.
                   else model.order.num_steps())
    name = (row if k is None else f"{row}_{k}") + (f"_step{step}" if peek else "")
    png = os.path.join(out_dir, f"{name}.png")
    save_grid(class_rows(images, labels, args.per_class), png, ncol=args.per_class, scale=2)
    e = {"name": name, "ar_steps": ar_steps, "sampler": sampler.name,
         "cfg_scale": float(sampling.cfg_scale), "temperature": float(sampling.temperature),
         "num_samples": n, "fd": float(scores["fd"]),
         "class_accuracy": float(scores["class_accuracy"]), "precision": float(scores["precision"]),
         "recall": float(scores["recall"]), "samples_per_s": n / seconds,
         "sample_seconds": seconds, "first_batch_s": first_s, "grid": png,
         "load_avg": os.getloadavg()[0]}
    out["entries"].append(e)
    _log.info("%s: FD %.2f  acc %.3f  %.1f samples/s  (%d AR steps x %d head steps)", name,
              e["fd"], e["class_accuracy"], e["samples_per_s"], ar_steps, head_steps)
  return out


def real_reference(args):
  """FD / accuracy of num_samples real training images (the floor of FD at this N)."""
  import numpy as np
  from arjax.config import ConfigDict
  from arjax.data.idx import load_bundled
  from arjax.evaluate.sample_metrics import offline_scores
  cfg = ConfigDict(dict(data=dict(source="mnist"), tokenizer=dict()))
  images, labels = load_bundled("mnist", "train")
  idx = np.concatenate([np.where(labels == c)[0][:-(-args.num_samples // 10)]
                        for c in range(10)])[:args.num_samples]
  s = offline_scores(cfg, np.asarray(images[idx]), np.asarray(labels[idx]))
  return {"num_samples": int(len(idx)), "fd": float(s["fd"]),
          "class_accuracy": float(s["class_accuracy"])}


# -- the table ------------------------------------------------------------------------------
def _fmt_s(s):
  if s is None:
    return "—"
  return f"{s / 60:.1f} min"


def _grid_link(entry, path):
  """The markdown link of a row's grid PNG from the table at `path`: a grid written for another
  --out (e.g. the workdir's table) is copied into the folder next to `path` first, so the
  table's links resolve wherever it is written."""
  png_dir = os.path.splitext(os.path.abspath(path))[0]
  want = os.path.join(png_dir, os.path.basename(entry["grid"]))
  if os.path.abspath(entry["grid"]) != want and os.path.isfile(entry["grid"]):
    os.makedirs(png_dir, exist_ok=True)
    shutil.copyfile(entry["grid"], want)
  return os.path.relpath(want, os.path.dirname(os.path.abspath(path)))


def write_table(path, rows, results, failed, args, meta, real):
  timing = meta.get("timing") or {}
  speed = lambda e: timing.get("samples_per_s", {}).get(e["name"].split("_step")[0],
                                                        e["samples_per_s"])
  base = results.get("discrete", {}).get("entries", [{}])[0] if "discrete" in results else None
  lines = ["# Continuous vs discrete tokens at one budget (bundled MNIST, 7x7 tokens)", ""]
  cmd = "python experiments/continuous.py" + (" --smoke" if args.smoke else "")
  lines += [f"Written by `{cmd} --workdir {args.workdir} --steps {args.steps}` "
            "(configs: `configs/continuous/compare.py:row=NAME`). Every row trains "
            + ("1 transformer block of width 32 (MAR: 1 + 1; the smoke's tiny models)"
               if args.smoke else "4 transformer blocks of width 96 (MAR, ARINAR and xAR: 2 "
               "encoder + 2 decoder blocks)") + " with the same batch "
            f"({meta.get('batch', '?')}), steps, optimiser (AdamW, lr {args.lr:g}, cosine) and "
            "seed through `arjax.train.train_and_evaluate`; the discrete row reads the VQ "
            "tokenizer's 7x7 codes, the continuous rows the KL tokenizer's 7x7x4 latents "
            "(posterior mean x scale factor). Tokenizers: configs/tokenizers/{kl,vq}.py"
            + (":smoke (4 steps; caches of 512 images per split)." if args.smoke else
               ", 200 steps each."), ""]
  lines += [f"Machine: {meta['hw']}. Samples: {args.num_samples} balanced class-conditional "
            "samples per row (seed 0), decoded to 28x28 through the row's tokenizer and scored "
            "by the bundled offline MNIST classifier against the test split: FD in its feature "
            "space (**not** Inception FID; biased upwards at this N, compare rows only with "
            "each other), class accuracy = share of samples the classifier assigns to the "
            "requested class. samples/s: the timed loop (sampling + decoding, batch "
            f"{args.batch_size}, after a warm-up batch that compiles), on the shared CPU"
            + (f": **timed interleaved in one process** (`--time`: benchmarks/common.py "
               f"time_interleaved, median of {timing.get('repeats')} calls of one batch of "
               f"{timing.get('batch_size')} per entry, the entries' calls alternating; load "
               f"average {timing.get('load_avg_start', 0):.1f} at the start, "
               f"{timing.get('load_avg_end', 0):.1f} at the end), so the rows' speeds compare "
               "with each other." if timing else
               ": the load average when each row was timed is in the JSON; speeds of rows "
               "timed under different loads compare only roughly."), ""]
  if base:
    met = base["class_accuracy"] >= BAR
    lines += [f"**The bar** (the discrete baseline's samples classified correctly at least "
              f"{BAR:.0%} of the time): discrete raster at {results['discrete']['train_steps']} "
              f"steps reaches {base['class_accuracy']:.1%}: "
              + ("**met**." if met else "**not met**: at this budget the table cannot test the "
                 "claim that continuous tokens beat discrete ones; rerun with more --steps."), ""]
  else:
    pk = (meta.get("peeks") or {}).get("discrete")
    now = ""
    if pk:
      now = (f" Its checkpoint at step {pk['train_steps']} reaches "
             f"{pk['entries'][0]['class_accuracy']:.1%} (intermediate, below).")
    lines += [f"**The bar** ({BAR:.0%} class accuracy of the discrete baseline at "
              f"{args.steps} steps): **not yet met / not measured**: the discrete row has not "
              "finished." + now + " The table cannot yet test the claim that continuous "
              "tokens beat discrete ones.", ""]
  head = ("| model | tokens | head | params | train steps (wall) | AR steps | head steps / token "
          "| FD (offline clf.) ↓ | class acc. ↑ | precision / recall | samples/s | grid |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
  body = []
  for r in rows:
    label, tokens, hname = ROWS[r]
    if r not in results:
      body.append(f"| {label} | {tokens} | {hname} | — | — | — | — | — | — | — | — | "
                  f"{failed.get(r, 'not finished yet')} |")
      continue
    res = results[r]
    for e in res["entries"]:
      lab = label + (f", {e['ar_steps']} steps" if r == "mar" else "")
      if e["name"] not in timing.get("samples_per_s", {e["name"]: 0}):
        lab += " (samples/s: its own timed loop, not interleaved)"
      png = _grid_link(e, path)
      body.append(f"| {lab} | {tokens} | {hname} | {res['params']:,} | {res['train_steps']} "
                  f"({_fmt_s(res['train_seconds'])}) | {e['ar_steps']} | {res['head_steps']} | "
                  f"{e['fd']:.2f} | {e['class_accuracy']:.3f} | {e['precision']:.2f} / "
                  f"{e['recall']:.2f} | {speed(e):.1f} | [grid]({png}) |")
  if real:
    body.append(f"| *real training images* | — | — | — | — | — | — | {real['fd']:.2f} | "
                f"{real['class_accuracy']:.3f} | — | — | {real['num_samples']} images |")
  lines += [head] + body + [""]
  prog = {r: p for r, p in meta.get("progress", {}).items() if p}
  if prog:
    lines += ["Rows still training when this file was written (step reached of "
              f"{args.steps}, training loss of the last logged step, steps/s then):", ""]
    lines += [f"- {ROWS[r][0]}: step {p['step']}, loss {p['loss']:.4f}, "
              f"{p['steps_per_sec']:.2f} steps/s, {_fmt_s(p['train_seconds'])} of training"
              for r, p in prog.items()]
    lines.append("")
  peeks = meta.get("peeks") or {}
  if peeks:
    lines += ["Checkpoints of rows still training, sampled and scored as above "
              "(`--peek`): **intermediate figures, not the budget's**.", "", head]
    for r, res in peeks.items():
      label, tokens, hname = ROWS[r]
      for e in res["entries"]:
        png = _grid_link(e, path)
        lines.append(f"| {label} (step {res['train_steps']} of {args.steps}) | {tokens} | "
                     f"{hname} | {res['params']:,} | {res['train_steps']} "
                     f"({_fmt_s(res['train_seconds'])}) | {e['ar_steps']} | {res['head_steps']} | "
                     f"{e['fd']:.2f} | {e['class_accuracy']:.3f} | {e['precision']:.2f} / "
                     f"{e['recall']:.2f} | {e['samples_per_s']:.1f} | [grid]({png}) |")
    lines.append("")
  cont = [(r, e) for r in results if r != "discrete" for e in results[r]["entries"]]
  if base and cont:
    better = [e["name"] for r, e in cont if e["fd"] < base["fd"]
              and e["class_accuracy"] >= base["class_accuracy"]]
    lines += ["## The claim at this scale", "",
              "\"Continuous tokens beat discrete ones\" is read here as: a continuous row has "
              "lower FD **and** at least the class accuracy of the discrete raster row at the "
              "same backbone and steps. Rows that do: "
              + (", ".join(f"`{n}`" for n in better) if better else "none") +
              (" (the bar above is not met, so this is no test of the claim)."
               if base["class_accuracy"] < BAR else "."), ""]
  lines += ["Sample grids: rows are classes 0-9, "
            f"{args.per_class} samples each.", ""]
  for r in rows:
    for e in results.get(r, {}).get("entries", []):
      lines += [f"**{e['name']}**: ![{e['name']}]({_grid_link(e, path)})", ""]
  if meta.get("stages"):
    lines += ["Stage wall times (this workdir, shared CPU): " + "; ".join(
        f"{k} {_fmt_s(v)}" for k, v in meta["stages"].items()) + ".", ""]
  notes = ""
  if os.path.isfile(path):
    with open(path) as f:
      old = f.read()
    if NOTES_MARKER in old:
      notes = old[old.index(NOTES_MARKER):]
  text = "\n".join(lines) + "\n" + (notes or NOTES_MARKER + "\n")
  with open(path, "w") as f:
    f.write(text)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/work/wt/contexp_runs/main")
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "continuous.md"))
  p.add_argument("--rows", default="", help="comma-separated rows to train (default: all)")
  p.add_argument("--steps", type=int, default=1000, help="training steps of every row")
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--tok_kl", default="", help="a finished KL tokenizer workdir to reuse")
  p.add_argument("--tok_vq", default="", help="a finished VQ tokenizer workdir to reuse")
  p.add_argument("--num_samples", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=100)
  p.add_argument("--per_class", type=int, default=8)
  p.add_argument("--mar_steps", default="8,16,49")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true",
                 help="tiny models and budgets end to end (18 min at load 8-15 on 2 cores)")
  p.add_argument("--report_only", action="store_true", help="only the table from results")
  p.add_argument("--time", action="store_true",
                 help="time every finished row's sampling interleaved in this process "
                      "(results/timing.json), then write the table; nothing is trained")
  p.add_argument("--peek", default="",
                 help="comma-separated rows still training: sample and score their latest "
                      "checkpoint now (results/peek_ROW.json, shown as in progress); nothing "
                      "is trained")
  args = p.parse_args(argv)
  args.mar_steps = [int(s) for s in args.mar_steps.split(",") if s]
  if args.smoke:
    args.steps, args.num_samples, args.batch_size, args.per_class = 4, 160, 80, 2
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                      datefmt="%H:%M:%S")
  rows = list(ROWS)
  want = [r for r in args.rows.split(",") if r] or rows
  bad = [r for r in want if r not in ROWS]
  if bad:
    raise SystemExit(f"--rows {bad}: unknown; expected some of {rows}")
  res_dir = os.path.join(args.workdir, "results")
  os.makedirs(res_dir, exist_ok=True)
  out_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                         os.path.splitext(os.path.basename(args.out))[0])
  os.makedirs(out_dir, exist_ok=True)
  failed = {}
  for r in [r for r in args.peek.split(",") if r]:
    if r not in ROWS or _done(res_dir, r):
      continue
    try:
      _mark(res_dir, f"peek_{r}", evaluate_row(r, args, res_dir, out_dir, peek=True))
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      _log.error("peek %s failed: %s", r, e)
  if args.time:
    done = [r for r in rows if _done(res_dir, r)]
    _log.info("timing %s interleaved", done)
    _mark(res_dir, "timing", time_rows(done, args, res_dir))
  if not args.report_only and not args.peek and not args.time:
    toks = {}
    needs_kl = any(r != "discrete" for r in want)
    needs_vq = "discrete" in want
    # The VQ tokenizer and its cache first: the discrete row decides the budget.
    for kind, need in (("vq", needs_vq), ("kl", needs_kl)):
      if need:
        toks[f"tok_{kind}"] = stage_tokenizer(kind, args, res_dir)
        toks[f"cache_{kind}"] = stage_cache(kind, toks[f"tok_{kind}"], args, res_dir)
      else:
        toks[f"tok_{kind}"] = args.__dict__[f"tok_{kind}"] or os.path.join(args.workdir, f"tok_{kind}")
        toks[f"cache_{kind}"] = os.path.join(args.workdir, f"mnist_{kind}", "{split}.array_record")
    for i, r in enumerate(want):
      if _done(res_dir, r):
        _log.info("[%d/%d] %s: done before, skipped", i + 1, len(want), r)
        continue
      try:
        stage_train(r, args, toks, res_dir)
        _log.info("[%d/%d] %s: sampling and scoring", i + 1, len(want), r)
        _mark(res_dir, r, evaluate_row(r, args, res_dir, out_dir))
      except Exception as e:  # noqa: BLE001  one row's failure must not lose the others.
        traceback.print_exc()
        failed[r] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        _log.error("%s failed: %s", r, failed[r])
  results = {r: _done(res_dir, r) for r in rows if _done(res_dir, r)}
  peeks = {r: _done(res_dir, f"peek_{r}") for r in rows
           if r not in results and _done(res_dir, f"peek_{r}")}
  real = _done(res_dir, "real")
  if (results or peeks) and (real is None or real["num_samples"] != args.num_samples):
    real = _mark(res_dir, "real", real_reference(args))
  stages = {}
  for s in ("tok_vq", "cache_vq", "tok_kl", "cache_kl"):
    d = _done(res_dir, s)
    if d and "seconds" in d:
      stages[s] = d["seconds"]
  meta = {"hw": f"CPU, {os.cpu_count()} cores ({platform.machine()}), shared with other jobs "
                f"(load average at writing {os.getloadavg()[0]:.1f})",
          "batch": next(iter(results.values()))["batch_size"] if results else "?",
          "stages": stages}
  meta["peeks"] = peeks
  meta["timing"] = _done(res_dir, "timing")
  meta["progress"] = {r: _progress(os.path.join(args.workdir, r)) for r in rows
                      if r not in results}
  table = write_table(args.out, rows, results, failed, args, meta, real)
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump({"steps": args.steps, "results": results, "real": real, "failed": failed,
               "stages": stages, "in_progress": peeks, "progress": meta["progress"],
               "timing": meta["timing"]}, f,
              indent=2)
  _log.info("wrote %s", table)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
