"""Data-constrained training: AR vs masked diffusion on a small unique subset, many epochs.

  PYTHONPATH=. python experiments/data_constrained.py --workdir workdirs/data_constrained

The claim tested (Prabhudesai et al. 2025, arXiv 2507.15857): with unique data U repeated for
many epochs, AR overfits early while masked diffusion keeps improving, so diffusion's validation
loss ends lower past some number of epochs. Both models are `arjax.models.diffusion_lm` (same
network shape as experiments/text.py), trained with the same steps x batch x length (equal
compute: the two objectives cost the same forward/backward per token) on random windows of the
first U characters of the training split. Every `--eval_every` steps both are scored on the
same fixed validation windows: AR's exact bits/char and the MDLM NELBO bound (fixed keys, so
the curve is not noisier than the model). The crossover (the first evaluation after which
diffusion's bound stays below AR's NLL) is stated in WORKDIR/results.json and the figure
WORKDIR/data_constrained.png. Resumable: the models checkpoint at each evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import text as T  # noqa: E402  (experiments/text.py: the shared model builder and trainer)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--unique", type=int, default=8192, help="U unique training characters")
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=32)
  p.add_argument("--eval_every", type=int, default=80)
  p.add_argument("--eval_windows", type=int, default=512)
  p.add_argument("--lr", type=float, default=2e-3)
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  L, B = args.seq_len, args.batch
  train_ids, val_ids = T.data()
  subset = train_ids[:args.unique]
  n_val = min(args.eval_windows, len(val_ids) // L)
  val = jnp.asarray(val_ids[:n_val * L].reshape(n_val, L).astype(np.int32))
  tokens_per_step = B * L
  res_path = os.path.join(args.workdir, "results.json")
  results = json.load(open(res_path)) if os.path.exists(res_path) else {}
  results["budget"] = dict(unique_chars=args.unique, steps=args.steps, batch=B, seq_len=L,
                           epochs=args.steps * tokens_per_step / args.unique, lr=args.lr,
                           eval_windows=n_val, backbone=str(T.backbone()),
                           hardware=f"{os.cpu_count()} CPU cores (shared), jax {jax.__version__}")
  print(results["budget"], flush=True)

  for name in ("ar", "mdlm"):
    fm = T.build(name, L)
    ev = jax.jit(lambda p, x: fm.bind(p).nelbo_terms(x, jax.random.key(123)))
    curve = results.setdefault(name, {"epochs": [], "val_bpc": [], "train_bpc": []})
    done = len(curve["epochs"]) * args.eval_every
    params = None
    for stop in range(args.eval_every, args.steps + 1, args.eval_every):
      if stop <= done:
        continue
      path = os.path.join(args.workdir, f"{name}.pkl")
      # One optimizer run over all steps; `train` resumes from its checkpoint and stops at `stop`
      # (the schedule is that of the full run, so stopping early changes nothing).
      params, tr, _ = T.train(fm, path, steps=args.steps, batch=B, lr=args.lr,
                              train_ids=subset, seq_len=L, log=lambda m: None,
                              every=args.eval_every, stop_at=stop)
      bpc = float(np.asarray(ev(params, val)).mean() / (L * math.log(2)))
      curve["epochs"].append(stop * tokens_per_step / args.unique)
      curve["val_bpc"].append(bpc)
      curve["train_bpc"].append(tr[-1][1] / math.log(2))
      print(f"{name} step {stop} epoch {curve['epochs'][-1]:.1f}: train "
            f"{curve['train_bpc'][-1]:.3f} val {bpc:.3f} bits/char", flush=True)
      with open(res_path, "w") as f:
        json.dump(results, f, indent=1)

  ar, md = np.array(results["ar"]["val_bpc"]), np.array(results["mdlm"]["val_bpc"])
  ep = np.array(results["ar"]["epochs"])
  below = md < ar
  cross = None
  for i in range(len(ep)):
    if below[i:].all():
      cross = float(ep[i])
      break
  results["summary"] = dict(
      ar_best=float(ar.min()), ar_best_epoch=float(ep[ar.argmin()]), mdlm_best=float(md.min()),
      mdlm_best_epoch=float(ep[md.argmin()]), ar_final=float(ar[-1]), mdlm_final=float(md[-1]),
      crossover_epoch=cross)
  print(results["summary"], flush=True)
  with open(res_path, "w") as f:
    json.dump(results, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(ep, ar, "o-", label="AR (exact NLL)")
  ax.plot(ep, md, "s-", label="masked diffusion (NELBO bound)")
  ax.plot(ep, results["ar"]["train_bpc"], ":", color="C0", label="AR train")
  ax.plot(ep, results["mdlm"]["train_bpc"], ":", color="C1", label="MDLM train")
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
