"""Character-level tiny Shakespeare: AR vs ARDM vs masked diffusion vs block diffusion, one budget.

  PYTHONPATH=. python experiments/text.py --workdir workdirs/text [--steps 1000]

Every row is a normal run of `python -m arjax.train` (`train_and_evaluate` on its config with
the budget's overrides: train.num_steps = --steps, checkpoints every 100 steps) in
WORKDIR/ROW, so a rerun skips finished rows (their final_metrics.json is at --steps) and resumes
an unfinished one from its newest checkpoint. The rows share one network shape (4 layers, width
128, 4 heads, SwiGLU rounded to 32; 64-character windows, batch 32, AdamW lr 3e-3, warmup 100,
cosine to 10 %):

  ar               configs/text/char_ar.py         the char AR baseline (exact bits/char)
  mdlm             configs/text/mdlm.py            masked diffusion (NELBO bound)
  bd3lm_b4 / b16   configs/text/bd3lm.py:block=B   block diffusion (NELBO bound)
  ardm             configs/text/ardm.py            order-agnostic AR (its bound)
  ar_dlm           configs/text/dlm.py:objective=ar   AR on the diffusion LMs' network: the
                   start of SDAR's conversion (--extra)
  sdar_from_ar_b4  `arjax.convert sdar` of ar_dlm into bd3lm b = 4, then --convert_steps more
                   steps of the trainer (--extra)

Validation bits/char is the trainer's text evaluation over the whole validation split
(final_metrics.json: test_bits_per_char, `bound` true for the NELBO / order-agnostic bounds).
Then, per model and sampler: tokens per forward pass, samples/s (batch 16, timed on the second
call after compilation) and the bits/char of the samples under the AR row's model (generative
bits/char, lower = closer to what AR considers likely text); with --sdtt_rounds > 0, SDTT rounds
on the trained MDLM (`arjax.models.sdtt`, divergence --sdtt_kind: kl-bwd, SDTT's default, or
kl-fwd; --sdtt_only skips the sampler table). Everything goes to WORKDIR/results.json (and
WORKDIR/samples.txt); the measurements of a row already in results.json are skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import arjax  # noqa: E402
from arjax.config import load_config  # noqa: E402
from arjax.data.text import corpus_ids, split_ids  # noqa: E402
from arjax.models import sdtt  # noqa: E402
from arjax.sampling import SAMPLERS, SamplingConfig, build_sampler  # noqa: E402
from arjax.sampling.diffusion_lm import DecodeOptions  # noqa: E402
from arjax.tokenizers.char import CHARS  # noqa: E402
from arjax.train.loop import train_and_evaluate  # noqa: E402

ROWS = {
    "ar": "configs/text/char_ar.py",
    "mdlm": "configs/text/mdlm.py",
    "bd3lm_b4": "configs/text/bd3lm.py:block=4",
    "bd3lm_b16": "configs/text/bd3lm.py:block=16",
    "ardm": "configs/text/ardm.py",
}
EXTRA_ROWS = {"ar_dlm": "configs/text/dlm.py:objective=ar"}
CONVERSION = ("sdar_from_ar_b4", "configs/text/bd3lm.py:block=4", "ar_dlm")


def budget_overrides(steps: int):
  return [f"train.num_steps={steps}", "train.checkpoint_every=100", "train.log_every=100"]


def data():
  ids = np.asarray(corpus_ids("tinyshakespeare"))
  return split_ids(ids, "train", "tinyshakespeare"), split_ids(ids, "validation", "tinyshakespeare")


def batch_at(ids, step, batch, seq_len, seed=0):
  """Random training windows of step `step` (a pure function of (seed, step): resumable)."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(ids) - seq_len + 1, batch)
  return ids[starts[:, None] + np.arange(seq_len)].astype(np.int32)


def _save(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    pickle.dump(jax.device_get(obj), f)
  os.replace(tmp, path)


def finished(workdir: str, steps: int):
  """final_metrics.json of a run finished at `steps` (None: not finished)."""
  path = os.path.join(workdir, "final_metrics.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    m = json.load(f)
  return m if m.get("step") == steps else None


def evaluate_latest(workdir: str):
  """(final-metrics-like dict, step) of an unfinished run at its newest checkpoint: the same
  validation bits/char as the trainer's text evaluation (Experiment.bits_per_dim)."""
  from arjax.loading import resolve_step
  from arjax.train.loop import Experiment
  fm, variables, cfg = arjax.load(workdir)
  exp = Experiment(cfg)
  bpd = exp.bits_per_dim(variables, "test", cfg.eval.num_examples)
  return {"test_bits_per_char": bpd["bits_per_dim"], "test_tokens": bpd["num_tokens"],
          "bound": bool(getattr(exp.abstract_model, "nll_is_bound", False))}, resolve_step(workdir)


def train_seconds(workdir: str) -> float:
  """Training wall time from the trainer's log rows (steps between rows / steps per second)."""
  total, last = 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      rate = r.get("steps_per_sec", r.get("steps_per_second"))  # the trainer's key, old and new
      if rate is not None:
        total += (r["step"] - last) / max(rate, 1e-9)
        last = r["step"]
  return total


def text_of(tokens):
  return ["".join(CHARS[int(t)] for t in row) for row in np.asarray(tokens)]


def sample_stats(sampler, params, passes=None, batch=16, seed=0):
  """Tokens per forward pass, samples/s (second call, after compilation) and the tokens.
  `passes`: the forward-pass count of samplers that do not return one (AR, ARDM: one per
  token); the diffusion-LM samplers return theirs."""
  labels = jnp.zeros((batch,), jnp.int32)

  def run(key):
    if hasattr(sampler, "sample") and passes is None:
      tok, nfe = sampler.sample(params, key, batch)
    else:
      tok, nfe = sampler.sample_tokens(params, labels, key), passes
    jax.block_until_ready(tok)
    return tok, nfe
  run(jax.random.key(seed))                       # compile + warm up
  t0 = time.time()
  tok, nfe = run(jax.random.key(seed + 1))
  dt = time.time() - t0
  seq_len = tok.shape[1]
  return dict(tokens_per_forward=seq_len / int(nfe), forward_passes=int(nfe),
              samples_per_s=batch / dt), np.asarray(tok)


def gen_bpc(judge, tokens):
  """Bits/char of sampled sequences under the AR row's model (the judge)."""
  fm, params = judge
  x = jnp.asarray(tokens, jnp.int32)
  nll = jax.jit(lambda p, x: fm.bind(p).loss(
      {"tokens": x, "label": jnp.zeros((x.shape[0],), jnp.int32)}, train=False)[1]["nll"])(
          params, x)
  return float(nll) / math.log(2)


def mdlm_bound(fm, params, val_ids, seq_len, batch=256, seed=1):
  """Validation NELBO bits/char of a 'diffusion_lm' over the non-overlapping L windows of the
  validation split (one t and mask per window) and its standard error (for SDTT students,
  which are not trainer runs)."""
  n = len(val_ids) // seq_len
  x_all = val_ids[:n * seq_len].reshape(n, seq_len).astype(np.int32)
  f = jax.jit(lambda p, x, k: fm.bind(p).nelbo_terms(x, k))
  out = []
  for i in range(0, n, batch):
    out.append(np.asarray(f(params, jnp.asarray(x_all[i:i + batch]), jax.random.key(seed + i))))
  per = np.concatenate(out) / (seq_len * math.log(2))
  return float(per.mean()), float(per.std() / math.sqrt(len(per)))


def sdtt_round(fm, teacher, student_init, *, dt, steps, batch, lr, train_ids, seq_len, path,
               log, kind="kl-bwd", seed=0):
  """One SDTT round (Deschenaux & Gulcehre 2025, jdeschena/sdtt) with `arjax.models.sdtt`: the
  teacher's two ancestral steps of size dt give the targets (`sdtt_targets`), the student (one
  step of 2 dt, initialised from `student_init`) minimises `sdtt_loss(..., kind)` on the
  positions masked in x_t (kind 'kl-bwd', SDTT's default, or 'kl-fwd'). Returns the student's
  parameters (cached in `path`: a rerun reuses a finished round)."""
  sdtt.check_divergence(kind)
  if os.path.exists(path):
    with open(path, "rb") as f:
      return pickle.load(f)["params"]
  model_t = fm.bind(teacher)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(20, steps // 4),
                                                      max(steps, 2), lr * 0.1),
                   b1=0.9, b2=0.99, weight_decay=0.0)

  @jax.jit
  def step_fn(params, opt, x, key):
    xt, masked, tgt = sdtt.sdtt_targets(model_t, x, key, dt)
    loss, g = jax.value_and_grad(
        lambda p: sdtt.sdtt_loss(fm.bind(p), xt, masked, tgt, kind))(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  params, opt = student_init, tx.init(student_init)
  for s in range(steps):
    x = batch_at(train_ids, s, batch, seq_len, seed + 7)
    params, opt, loss = step_fn(params, opt, jnp.asarray(x), jax.random.key(seed * 7919 + s))
    if (s + 1) % 20 == 0:
      log(f"  sdtt {kind} dt={dt:.4f} step {s + 1}/{steps} divergence {float(loss):.4f}")
  _save(path, dict(params=params))
  return params


LABELS = {"ar": "AR (`char_ar`)", "mdlm": "masked diffusion (`mdlm`)",
          "bd3lm_b4": "block diffusion b = 4 (`bd3lm`)", "bd3lm_b16": "block diffusion b = 16",
          "ardm": "ARDM (`ardm`)", "ar_dlm": "AR on the diffusion-LM network (`dlm.py:objective=ar`)",
          "sdar_from_ar_b4": "SDAR conversion: ar_dlm -> b = 4"}


def markdown(results) -> str:
  """The tables of docs/text.md from results.json."""
  out = ["| model | parameters | validation bits/char | train wall time |", "|---|---|---|---|"]
  rows = [k for k in LABELS if k in results and "bpc" in results[k]]
  for k in rows:
    r = results[k]
    kind = "≤ (bound)" if r["bound"] else "exact"
    extra = (f" (at conversion: {r['bpc_at_conversion']:.3f})" if "bpc_at_conversion" in r
             else "")
    if r.get("at_step", r["steps"]) != r["steps"]:
      extra += f" **unfinished: step {r['at_step']} of {r['steps']}**"
    out.append(f"| {LABELS[k]} | {r['params'] / 1e6:.3f}M | {r['bpc']:.3f} {kind}{extra} | "
               f"{r['train_s'] / 60:.1f} min |")
  out += ["", "| model | sampler | tokens / forward pass | samples/s (batch 16) | "
          "gen. bits/char under AR |", "|---|---|---|---|---|"]
  for k in rows:
    for tag, st in results[k].get("sampling", {}).items():
      out.append(f"| {LABELS[k]} | `{tag}` | {st['tokens_per_forward']:.2f} | "
                 f"{st['samples_per_s']:.1f} | {st['gen_bpc_under_ar']:.3f} |")
  out += ["", "Text samples (the first sample of each sampler):", "", "```"]
  for k in rows:
    for tag, st in results[k].get("sampling", {}).items():
      out.append(f"{k:<10} {tag[:44]:<44} {json.dumps(st['samples'][0])}")
  out.append("```")
  return "\n".join(out) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
  p.add_argument("--extra", action="store_true", help="also ar_dlm and SDAR's conversion")
  p.add_argument("--convert_steps", type=int, default=200)
  p.add_argument("--sdtt_rounds", type=int, default=2)
  p.add_argument("--sdtt_steps", type=int, default=80)
  p.add_argument("--sdtt_kind", default="kl-bwd", choices=sdtt.DIVERGENCES,
                 help="SDTT's divergence (arjax.models.sdtt): kl-bwd = KL(student || target), "
                      "SDTT's default; kl-fwd = KL(target || student)")
  p.add_argument("--sdtt_only", action="store_true",
                 help="after training, measure only the SDTT rounds (not the sampler table)")
  p.add_argument("--train_only", action="store_true", help="train the rows, measure nothing")
  p.add_argument("--smoke", action="store_true", help="the configs' smoke variants (a check)")
  p.add_argument("--partial", action="store_true",
                 help="do not train: report unfinished rows at their newest checkpoint")
  args = p.parse_args(argv)
  if args.sdtt_rounds < 0:
    p.error(f"--sdtt_rounds={args.sdtt_rounds}; expected >= 0")
  if args.sdtt_steps < 1:
    p.error(f"--sdtt_steps={args.sdtt_steps}; expected >= 1")
  os.makedirs(args.workdir, exist_ok=True)
  res_path = os.path.join(args.workdir, "results.json")
  results = json.load(open(res_path)) if os.path.exists(res_path) else {}
  logf = open(os.path.join(args.workdir, "log.txt"), "a")

  def log(msg):
    print(msg, flush=True)
    logf.write(time.strftime("%H:%M:%S ", time.gmtime()) + msg + "\n")
    logf.flush()

  touched = {"budget"}   # the entries this process wrote (rows trained in parallel processes
  #                        write theirs into the same file: merge, never overwrite theirs).

  def save():
    disk = json.load(open(res_path)) if os.path.exists(res_path) else {}
    for k, v in disk.items():
      if k not in touched:
        results[k] = v
    with open(res_path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(res_path + ".tmp", res_path)

  over = budget_overrides(args.steps)
  smoke = lambda spec: spec + ((",smoke" if ":" in spec else ":smoke") if args.smoke else "")
  rows = {k: ROWS[k] for k in args.rows.split(",") if k}
  if args.extra:
    rows.update(EXTRA_ROWS)
  unknown = sorted(set(args.rows.split(",")) - set(ROWS) - {""})
  if unknown:
    raise ValueError(f"--rows: unknown {unknown}; expected some of {sorted(ROWS)}")
  ar_cfg = load_config(smoke(ROWS["ar"]), over)
  L, B = ar_cfg.data.seq_len, ar_cfg.train.batch_size
  results["budget"] = dict(
      steps=args.steps, batch=B, seq_len=L, lr=ar_cfg.train.lr,
      warmup=ar_cfg.train.warmup_steps, tokens_seen=args.steps * B * L,
      backbone=dict(num_layers=ar_cfg.model.backbone.num_layers,
                    dim=ar_cfg.model.backbone.dim, num_heads=ar_cfg.model.backbone.num_heads,
                    multiple_of=ar_cfg.model.backbone.multiple_of),
      hardware=f"{os.cpu_count()} CPU cores (shared), jax {jax.__version__} "
               f"{jax.default_backend()}")
  log(f"budget: {results['budget']}")

  # -- training: each row a trainer run (resumable; finished rows are skipped) ------------------
  def train_row(name, spec, steps=args.steps, setup=None):
    wd = os.path.join(args.workdir, name)
    spec = smoke(spec)
    cfg = load_config(spec, budget_overrides(steps))
    m, at = finished(wd, steps), steps
    if m is None and args.partial:
      m, at = evaluate_latest(wd)
      log(f"  {name}: unfinished, evaluated at its checkpoint {at} of {steps}")
    if m is None:
      if setup is not None and not os.path.isdir(os.path.join(wd, "checkpoints")):
        setup(wd)
      log(f"== {name}: {spec}, {steps} steps")
      t0 = time.time()
      m = train_and_evaluate(cfg, wd)
      log(f"  {name} trained in {time.time() - t0:.0f} s")
    fm, variables, _ = arjax.load(wd)
    touched.add(name)
    row = results.setdefault(name, {})
    row.update(config=spec, steps=steps, at_step=at, bpc=m["test_bits_per_char"],
               bound=bool(m["bound"]),
               test_characters=m["test_tokens"], params=int(fm.param_count()),
               train_s=train_seconds(wd))
    log(f"  {name}: validation bits/char {row['bpc']:.3f}{' (bound)' if row['bound'] else ''}")
    save()
    return fm, variables, cfg

  models = {}
  for name, spec in rows.items():
    models[name] = train_row(name, spec)
  if args.extra:
    from arjax.convert.sdar import convert_sdar
    name, spec, src = CONVERSION
    src_wd = os.path.join(args.workdir, src)
    models[name] = train_row(name, spec, steps=args.convert_steps,
                             setup=lambda wd: convert_sdar(src_wd, wd, smoke(spec),
                                                           budget_overrides(args.convert_steps)))
    fm, _, _ = models[name]
    src_fm, src_vars, _ = models[src]
    _, val_ids = data()
    results[name]["bpc_at_conversion"] = mdlm_bound(fm, src_vars, val_ids, L)[0]
    save()
  if args.train_only:
    log("trained")
    return

  # -- sampling: tokens per pass, samples/s, generative bits/char under the AR row's model -----
  # The judge: the AR row's model (loaded from WORKDIR/ar when that row is not in --rows).
  judge = models["ar"][:2] if "ar" in models else arjax.load(os.path.join(args.workdir, "ar"))[:2]
  samplers = {
      "ar": [("auto", None)],
      "ardm": [("auto", None)],
      "mdlm": [("mdlm", dict(steps=L)), ("mdlm", dict(steps=L // 4)),
               ("mdlm", dict(steps=L // 4, lrd=True)),
               ("sdar", dict(block_size=L, strategy="dynamic", threshold=0.9, steps=L // 4))],
      "bd3lm_b4": [("sdar", dict(strategy="static", steps=4)),
                   ("sdar", dict(strategy="dynamic", threshold=0.9, steps=4)),
                   ("sdar", dict(strategy="dynamic", threshold=0.7, steps=2))],
      "bd3lm_b16": [("sdar", dict(strategy="dynamic", threshold=0.9, steps=16)),
                    ("sdar", dict(strategy="dynamic", threshold=0.9, steps=4)),
                    ("fast_dllm", dict(threshold=0.9, sub_block=4))],
      "ar_dlm": [("text_ar", {})],
      "sdar_from_ar_b4": [("sdar", dict(strategy="dynamic", threshold=0.9, steps=4))],
  }
  for name in ([] if args.sdtt_only else models):
    fm, variables, cfg = models[name]
    rows_s = results[name].setdefault("sampling", {})
    for sname, opts in samplers.get(name, []):
      tag = "default" if opts is None else sname + "".join(f" {k}={v}" for k, v in opts.items())
      if tag in rows_s:
        continue
      sampling = SamplingConfig(temperature=1.0, cfg_scale=1.0, name=sname)
      if opts is None:   # the model's own sampler through the config (AR, ARDM: a token a pass)
        sampler, passes = build_sampler(fm, sampling, cfg), L
        tag = "default (" + type(sampler).__name__ + ")"
      else:
        sampler, passes = SAMPLERS.get(sname)(fm, sampling, decode=DecodeOptions(**opts)), None
      st, tok = sample_stats(sampler, variables, passes)
      st["gen_bpc_under_ar"] = gen_bpc(judge, tok)
      st["samples"] = text_of(tok[:2])
      rows_s[tag] = st
      log(f"  {name} {tag}: {st['tokens_per_forward']:.2f} tokens/pass, "
          f"{st['samples_per_s']:.1f} samples/s, gen bits/char {st['gen_bpc_under_ar']:.3f}")
      save()
  if not args.sdtt_only:
    with open(os.path.join(args.workdir, "tables.md"), "w") as f:
      f.write(markdown(results))
    with open(os.path.join(args.workdir, "samples.txt"), "w") as f:
      for name in models:
        for tag, st in results[name].get("sampling", {}).items():
          f.write(f"### {name} / {tag}\n" + "\n---\n".join(st["samples"]) + "\n\n")

  # -- SDTT: rounds of distillation of the MDLM; each halves the sampling steps -----------------
  if args.sdtt_rounds > 0 and "mdlm" in models:
    train_ids, val_ids = data()
    fm, teacher, _ = models["mdlm"]
    teacher, _ = fm.split_model_state(teacher)
    touched.add("sdtt")
    # results["sdtt"][kind]["K=..."]: one entry per divergence, so kl-fwd and kl-bwd rounds
    # (their students cached in sdtt_<kind>_round<r>.pkl) never mix.
    sd = results.setdefault("sdtt", {}).setdefault(args.sdtt_kind, {})
    k_steps = L
    for r in range(args.sdtt_rounds + 1):
      key = f"K={k_steps}"
      if r > 0:
        dt = 1.0 / (2 * k_steps)   # the teacher ran 2 k_steps steps; the student takes k_steps.
        t0 = time.time()
        teacher = sdtt_round(fm, teacher, teacher, dt=dt, steps=args.sdtt_steps, batch=B,
                             lr=3e-4, train_ids=train_ids, seq_len=L, kind=args.sdtt_kind,
                             path=os.path.join(args.workdir,
                                               f"sdtt_{args.sdtt_kind}_round{r}.pkl"), log=log)
        log(f"  sdtt round {r} ({args.sdtt_kind}): {time.time() - t0:.0f} s")
      if key not in sd:
        row = {}
        for k in sorted({k_steps, max(k_steps // 2, 1), max(k_steps // 4, 1)}, reverse=True):
          s = SAMPLERS.get("mdlm")(fm, SamplingConfig(temperature=1.0, name="mdlm"),
                                   decode=DecodeOptions(steps=k))
          st, tok = sample_stats(s, teacher)
          row[f"steps={k}"] = dict(gen_bpc_under_ar=gen_bpc(judge, tok),
                                   samples_per_s=st["samples_per_s"])
        bpc, se = mdlm_bound(fm, teacher, val_ids, L)
        sd[key] = dict(round=r, bpc=bpc, bpc_se=se, sampling=row, steps=args.sdtt_steps)
        log(f"  sdtt {args.sdtt_kind} round {r} (student for {k_steps} steps): NELBO "
            f"{bpc:.3f} bits/char; "
            + ", ".join(f"{k}: gen {v['gen_bpc_under_ar']:.3f}" for k, v in row.items()))
        save()
      k_steps //= 2
  log("done")


if __name__ == "__main__":
  main()
