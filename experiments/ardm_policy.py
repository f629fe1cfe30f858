"""ARDM's dynamic-programming step budgets on tiny Shakespeare -> docs/text.md ("ARDM step
budgets" section).

  python experiments/ardm_policy.py --steps 800          # trains configs/text/ardm.py first
  python experiments/ardm_policy.py --smoke --workdir /tmp/a --out /tmp/a.md

Trains (or resumes) configs/text/ardm.py, then estimates the per-step loss curve l_t (t = 1..D,
mean -log p of a token predicted with t-1 random tokens known; `ARDM.step_losses`) on
--batches batches of training windows and on the same number of validation windows (full
windows only). For each budget K the DP policy (arjax.orders.ardm.dp_policy) is fitted on the
training curve and its bound is read on the validation curve, next to K equal steps. K = D is
the full order-agnostic bound (one token per step).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "text", "ardm.py")
START, END = "<!-- ardm-policy:start -->", "<!-- ardm-policy:end -->"


def loss_curve(fm, params, config, split: str, batches: int, batch_size: int, seed: int):
  """float64 [D]: l_t over `batches` batches of full windows of `split`."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from arjax import data as data_lib
  steps = jax.jit(lambda p, tok, t, k: fm.bind(p).step_losses(
      tok, jnp.zeros((tok.shape[0],), jnp.int32), t, k))
  it = data_lib.make_iterator(config.data, split, global_batch_size=batch_size, seed=seed,
                              shuffle=True, num_epochs=None, process_index=0, process_count=1)
  d = config.data.seq_len
  sums, rows = np.zeros(d), 0
  for i in range(batches):
    b = next(it)
    full = b["token_mask"].all(1)
    tok = jnp.asarray(b["tokens"][full])
    for t in range(1, d + 1):
      key = jax.random.fold_in(jax.random.key(seed), i * d + t)
      sums[t - 1] += float(np.asarray(steps(params, tok, t, key)).sum())
    rows += int(full.sum())
  return sums / rows, rows


def write_section(path: str, heading: str, body: str) -> None:
  old = open(path).read() if os.path.isfile(path) else "# Text\n"
  block = f"{START}\n{body}\n{END}"
  if START in old and END in old:
    new = old[:old.index(START)] + block + old[old.index(END) + len(END):]
  else:
    new = old.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(new)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "ardm"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "text.md"))
  p.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--budgets", default="1,2,4,8,16,32")
  p.add_argument("--smoke", action="store_true")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  import numpy as np
  from arjax import loading
  from arjax.config import load_config
  from arjax.orders.ardm import dp_policy, policy_cost, sizes_of
  from arjax.train import train_and_evaluate
  spec = CONFIG + (":smoke" if args.smoke else "")
  overrides = [f"train.num_steps={args.steps}"] if args.steps else []
  config = load_config(spec, overrides)
  t0 = time.time()
  final = train_and_evaluate(config, args.workdir)
  train_seconds = time.time() - t0
  fm, params, config = loading.load(args.workdir)
  d = config.data.seq_len
  l_train, n_train = loss_curve(fm, params, config, "train", args.batches, args.batch_size, 1)
  l_val, n_val = loss_curve(fm, params, config, "test", args.batches, args.batch_size, 2)
  ln2 = math.log(2.0)
  rows = []
  for k in [int(x) for x in args.budgets.split(",")] + [d]:
    if k > d or any(r["K"] == k for r in rows):
      continue
    _, bounds = dp_policy(l_train, k)
    equal = np.round(np.linspace(0, d, k + 1)).astype(int) + 1
    rows.append({"K": k, "dp_val": policy_cost(l_val, bounds) / d / ln2,
                 "dp_train": policy_cost(l_train, bounds) / d / ln2,
                 "equal_val": policy_cost(l_val, equal) / d / ln2,
                 "sizes": sizes_of(bounds)})
  lines = [
      f"Command: `python experiments/ardm_policy.py{' --steps ' + str(args.steps) if args.steps else ''}` "
      f"(configs/text/ardm.py{':smoke' if args.smoke else ''}: {config.train.num_steps} steps x "
      f"{config.train.batch_size} windows of {d} characters, width {config.model.backbone.dim} x "
      f"{config.model.backbone.num_layers} layers; training {train_seconds / 60:.1f} min wall "
      f"on the shared 2-core CPU). Validation bound of the trained ARDM (one token per step, "
      f"the trainer's estimate over the whole split): "
      f"{final.get('test_bits_per_char', float('nan')):.3f} bits/char. The curve l_t was "
      f"estimated on {n_train} training windows and {n_val} validation windows (one random "
      "order per window and step). Bits/char of generating in K steps: the DP policy fitted on "
      "the training curve, read on the validation curve, against K equal steps.",
      "",
      "| K steps | DP policy, validation (bits/char) | DP policy, training | equal steps, "
      "validation | DP step sizes (first ones) |",
      "|---|---|---|---|---|"]
  for r in rows:
    sizes = ",".join(str(s) for s in r["sizes"][:12]) + (",..." if len(r["sizes"]) > 12 else "")
    lines.append(f"| {r['K']} | {r['dp_val']:.3f} | {r['dp_train']:.3f} | "
                 f"{r['equal_val']:.3f} | {sizes} |")
  body = "\n".join(lines)
  write_section(args.out, "ARDM step budgets", body)
  with open(os.path.join(args.workdir, "policy.json"), "w") as f:
    json.dump({"rows": rows, "l_train": list(l_train), "l_val": list(l_val)}, f, indent=1)
  print(body)
  return 0


if __name__ == "__main__":
  sys.exit(main())
