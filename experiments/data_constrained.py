"""Data-constrained training: AR vs masked diffusion on a small unique subset, many epochs.

  PYTHONPATH=. python experiments/data_constrained.py --workdir workdirs/data_constrained \
      [--config model.backbone.num_layers=2 ...] [--smoke]

The claim tested (Prabhudesai et al. 2025, arXiv 2507.15857): with unique data U repeated for
many epochs, AR overfits early while masked diffusion keeps improving, so diffusion's validation
loss ends lower past some number of epochs.

Both models are normal runs of the trainer (`arjax.train.train_and_evaluate`) in WORKDIR/ar and
WORKDIR/mdlm, on configs/text/dlm.py:objective=ar and :objective=mdlm (model 'diffusion_lm',
the same network: 4 layers, width 128 unless --config overrides it) with these overrides:
  data.train_chars = --unique   only the first U characters of the training split are windowed
                                (every window of L inside them), repeated for many epochs;
  data.seq_len = model.seq_len = tokenizer.length = model.block_size = --seq_len;
  train.batch_size = --batch, train.num_steps = --steps, train.lr = --lr (dlm.py's warmup and
  cosine schedule), log and checkpoint every --eval_every steps;
  eval.evaluators = {bits_per_char: {every: --eval_every}}, eval.num_examples = --eval_windows
                                (the first windows of the validation split, so evaluation is cheap).
Equal compute: same steps x batch x length, and both objectives cost one forward/backward of L
tokens per window. Validation bits/char (`test_bits_per_char` in WORKDIR/NAME/metrics.jsonl) is
AR's exact NLL and MDLM's NELBO upper bound; the train columns are the trainer's logged training
loss in bits/char, the mean over the --eval_every steps before each evaluation (MDLM's is its bound
on the training windows). The crossover (the first evaluation from which diffusion's bound stays
below AR's NLL) goes to WORKDIR/results.json with the curves, and the figure to
WORKDIR/data_constrained.png. Resumable: a rerun resumes each run from its newest checkpoint
(a finished run is skipped); --report only reads what metrics.jsonl holds (no training).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from arjax.config import load_config  # noqa: E402

MODELS = {"ar": "configs/text/dlm.py:objective=ar", "mdlm": "configs/text/dlm.py:objective=mdlm"}


def run_config(name: str, args):
  """The locked trainer config of model `name` ('ar' | 'mdlm') at the script's budget."""
  spec = MODELS[name] + (",smoke" if args.smoke else "")
  L = args.seq_len
  over = [f"data.train_chars={args.unique}", f"data.seq_len={L}", f"model.seq_len={L}",
          f"tokenizer.length={L}", f"model.block_size={L}", f"train.batch_size={args.batch}",
          f"train.num_steps={args.steps}", f"train.lr={args.lr}",
          f"train.log_every={args.eval_every}", f"train.checkpoint_every={args.eval_every}",
          f"train.eval_every={args.eval_every}", f"eval.num_examples={args.eval_windows}",
          f"eval.batch_size={min(128, args.eval_windows)}"] + list(args.config)
  if args.smoke:
    over.append("train.warmup_steps=1")
  cfg = load_config(spec, over)
  with cfg.unlocked():
    cfg.eval.evaluators = ml_collections.ConfigDict(
        {"bits_per_char": {"every": args.eval_every}})
  return cfg


def read_curve(workdir: str, tokens_per_step: int, unique: int):
  """{epochs, step, val_bpc, train_bpc} from a run's metrics.jsonl (the evaluations' steps)."""
  path = os.path.join(workdir, "metrics.jsonl")
  train, val = {}, {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        if "test_bits_per_char" in r:
          val[r["step"]] = r["test_bits_per_char"]
        if "bits_per_dim" in r:   # the trainer's training loss per character, in bits
          train[r["step"]] = r["bits_per_dim"]
  steps = sorted(val)
  return dict(step=steps, epochs=[s * tokens_per_step / unique for s in steps],
              val_bpc=[val[s] for s in steps], train_bpc=[train.get(s) for s in steps])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--unique", type=int, default=8192, help="U unique training characters")
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=32)
  p.add_argument("--eval_every", type=int, default=80)
  p.add_argument("--eval_windows", type=int, default=512,
                 help="validation windows of --seq_len scored at each evaluation")
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--models", default="ar,mdlm", help="the runs to train (e.g. one per process)")
  p.add_argument("--config", action="append", default=[],
                 help="an extra config override FIELD=VALUE for both runs (repeatable), e.g. "
                      "model.backbone.num_layers=2")
  p.add_argument("--smoke", action="store_true",
                 help="dlm.py's smoke network (a check of the wiring, a few steps)")
  p.add_argument("--report", action="store_true", help="no training: report metrics.jsonl")
  args = p.parse_args(argv)
  names = [n for n in args.models.split(",") if n]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    raise ValueError(f"--models: unknown {unknown}; expected some of {sorted(MODELS)}")
  if args.steps % args.eval_every:
    raise ValueError(f"--steps={args.steps} is not a multiple of --eval_every={args.eval_every}")
  os.makedirs(args.workdir, exist_ok=True)
  tokens_per_step = args.batch * args.seq_len
  cfgs = {n: run_config(n, args) for n in MODELS}   # both checked, even when one is trained.
  bb = cfgs["ar"].model.backbone
  budget = dict(unique_chars=args.unique, steps=args.steps, batch=args.batch,
                seq_len=args.seq_len, epochs=args.steps * tokens_per_step / args.unique,
                lr=args.lr, warmup=cfgs["ar"].train.warmup_steps,
                eval_every=args.eval_every, eval_windows=args.eval_windows,
                eval_characters=args.eval_windows * args.seq_len,
                backbone=dict(num_layers=bb.num_layers, dim=bb.dim, num_heads=bb.num_heads,
                              multiple_of=bb.multiple_of),
                overrides=list(args.config), smoke=args.smoke,
                hardware=f"{os.cpu_count()} CPU cores (shared), jax {jax.__version__} "
                         f"{jax.default_backend()}")
  print(budget, flush=True)

  if not args.report:
    from arjax.train.loop import train_and_evaluate
    for name in names:
      wd = os.path.join(args.workdir, name)
      fin = os.path.join(wd, "final_metrics.json")
      if os.path.isfile(fin) and json.load(open(fin)).get("step") == args.steps:
        print(f"{name}: finished at step {args.steps}, skipped", flush=True)
        continue
      t0 = time.time()
      train_and_evaluate(cfgs[name], wd)
      print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)

  results = dict(budget=budget)
  for name in MODELS:
    results[name] = read_curve(os.path.join(args.workdir, name), tokens_per_step, args.unique)
    for s, e, v, t in zip(*(results[name][k] for k in ("step", "epochs", "val_bpc",
                                                        "train_bpc"))):
      print(f"{name} step {s} epoch {e:.1f}: train {t if t is None else round(t, 3)} "
            f"val {v:.3f} bits/char", flush=True)
  n = min(len(results["ar"]["step"]), len(results["mdlm"]["step"]))
  if n == 0:
    msg = f"{args.workdir}: no evaluation of both runs in their metrics.jsonl yet"
    if args.report:
      raise ValueError(msg)
    print(msg + "; rerun with --report once both are trained", flush=True)
    return
  ar, md = np.array(results["ar"]["val_bpc"][:n]), np.array(results["mdlm"]["val_bpc"][:n])
  ep = np.array(results["ar"]["epochs"][:n])
  cross = None
  for i in range(n):
    if (md[i:] < ar[i:]).all():
      cross = float(ep[i])
      break
  results["summary"] = dict(
      evaluations=n, last_epoch=float(ep[-1]), complete=bool(ep[-1] == budget["epochs"]),
      ar_best=float(ar.min()), ar_best_epoch=float(ep[ar.argmin()]), mdlm_best=float(md.min()),
      mdlm_best_epoch=float(ep[md.argmin()]), ar_final=float(ar[-1]), mdlm_final=float(md[-1]),
      crossover_epoch=cross)
  print(results["summary"], flush=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(ep, ar, "o-", label="AR validation (exact NLL)")
  ax.plot(ep, md, "s-", label="masked diffusion validation (NELBO bound)")
  ax.plot(ep, results["ar"]["train_bpc"][:n], ":", color="C0", label="AR train")
  ax.plot(ep, results["mdlm"]["train_bpc"][:n], ":", color="C1", label="MDLM train (bound)")
  if cross is not None:
    ax.axvline(cross, color="gray", ls="--", lw=1)
  ax.set_xlabel(f"epochs over U = {args.unique} characters")
  ax.set_ylabel("bits/char")
  ax.set_title("tiny Shakespeare, repeated data")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "data_constrained.png"), dpi=120)


if __name__ == "__main__":
  main()
