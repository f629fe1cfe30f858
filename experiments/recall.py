"""Associative recall and its PCFG variant (tinylang) -> the Recall section of docs/text.md.

  python experiments/recall.py                                  # both tasks, ~1 h on 2 busy CPUs
  python experiments/recall.py --smoke --workdir /tmp/r --out /tmp/r.md

For each task of configs/text/recall.py ('recall', 'treecall') and each backbone the library
has (today: the transformer), trains the config with `arjax.train.train_and_evaluate`, then
scores the 1000 generated test examples: accuracy of the argmax answer (the one scored token
of each example) and its NLL in bits. Writes a table between the markers of the "## Recall"
section of --out (other sections of the file are kept).

Resumable: WORKDIR/results/TASK.json is written when a task is done and a re-run skips it
(training also resumes from its latest checkpoint). Delete the JSON to redo a task.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "text", "recall.py")
BACKBONES = ("transformer",)   # Mamba and Perceiver AR join when they land.
START, END = "<!-- recall:start -->", "<!-- recall:end -->"
_log = logging.getLogger("experiments.recall")


def _spec(task: str, args) -> str:
  a = [f"task={task}"]
  if args.smoke:
    a.append("smoke")
  if args.steps:
    a.append(f"steps={args.steps}")
  return CONFIG + ":" + ",".join(a)


def answer_metrics(workdir: str):
  """Accuracy and NLL (bits) of the scored answers over the whole test split of a run."""
  import jax
  import numpy as np
  from arjax import data as data_lib
  from arjax import loading
  fm, params, config = loading.load(workdir)
  metrics = jax.jit(lambda p, b: fm.bind(p).loss(b, train=False)[1])
  it = data_lib.make_iterator(config.data, "test", global_batch_size=config.eval.batch_size,
                              seed=0, shuffle=False, num_epochs=1, drop_remainder=False,
                              process_index=0, process_count=1)
  correct = nll = count = 0.0
  for batch in it:
    m = jax.device_get(metrics(params, batch))
    n = float(m["num_tokens"])   # answers of real (unpadded) rows: token_mask * mask.
    correct += float(m["accuracy"]) * n
    nll += float(m["nll"]) * n
    count += n
  return {"accuracy": correct / count, "answer_bits": nll / count / np.log(2.0),
          "num_answers": int(count)}


def run_task(task: str, backbone: str, args):
  from arjax.config import load_config
  from arjax.train import train_and_evaluate
  config = load_config(_spec(task, args))
  wd = os.path.join(args.workdir, f"{task}_{backbone}")
  t0 = time.time()
  train_and_evaluate(config, wd)
  seconds = time.time() - t0
  out = {"task": task, "backbone": backbone, "source": config.data.source,
         "vocab": config.tokenizer.vocab_size, "seq_len": config.data.seq_len,
         "steps": config.train.num_steps, "batch": config.train.batch_size,
         "width": config.model.backbone.dim, "layers": config.model.backbone.num_layers,
         "train_seconds": round(seconds, 1), **answer_metrics(wd)}
  _log.info("%s", out)
  return out


def table(rows) -> str:
  lines = ["| task | backbone | data.source | vocab | L | steps x batch | width x layers | "
           "test accuracy | answer NLL (bits) | chance (bits) | wall time |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  import math
  for r in rows:
    answers = (r["vocab"] - 3) // 2 if r["task"] == "recall" else r["vocab"] - 3
    lines.append(
        f"| {r['task']} | {r['backbone']} | `{r['source']}` | {r['vocab']} | {r['seq_len']} | "
        f"{r['steps']} x {r['batch']} | {r['width']} x {r['layers']} | {r['accuracy']:.3f} | "
        f"{r['answer_bits']:.3f} | {math.log2(answers):.2f} | {r['train_seconds'] / 60:.1f} min |")
  return "\n".join(lines)


def write_section(path: str, body: str) -> None:
  """Replaces the text between START and END in `path` (adds a "## Recall" section if absent)."""
  old = open(path).read() if os.path.isfile(path) else "# Text\n"
  block = f"{START}\n{body}\n{END}"
  if START in old and END in old:
    new = old[:old.index(START)] + block + old[old.index(END) + len(END):]
  else:
    new = old.rstrip() + "\n\n## Recall\n\n" + block + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(new)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "recall"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "text.md"))
  p.add_argument("--tasks", default="recall,treecall")
  p.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
  p.add_argument("--smoke", action="store_true")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  os.makedirs(os.path.join(args.workdir, "results"), exist_ok=True)
  rows = []
  for task in args.tasks.split(","):
    for backbone in BACKBONES:
      path = os.path.join(args.workdir, "results", f"{task}_{backbone}.json")
      if os.path.isfile(path):
        rows.append(json.load(open(path)))
        continue
      row = run_task(task, backbone, args)
      with open(path, "w") as f:
        json.dump(row, f, indent=2)
      rows.append(row)
  body = (
      "Command: `python experiments/recall.py` (configs/text/recall.py; "
      f"{'smoke settings, ' if args.smoke else ''}machine: {platform.machine()} CPU, "
      f"{os.cpu_count()} cores shared with other jobs). Test accuracy: argmax answer on the "
      "1000 generated test examples (a stream disjoint from training); answer NLL: bits of "
      "the scored answer token; chance: log2 of the number of possible answers.\n\n"
      + table(rows))
  write_section(args.out, body)
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
