"""python -m arjax.tokenize --tokenizer_workdir DIR --data NAME --out PATH [--splits train,test]
                          [--batch_size 256] [--num_examples -1]

Encodes data set splits once with a trained tokenizer (the latest checkpoint of an
`arjax.train` run of model 'autoencoder') into ArrayRecord token caches that generators read
with data.source='array_record:PATH' (PATH with '{split}'); see arjax.train.token_cache. A
hybrid multi-scale run (quantizer.hybrid=True, HART) also writes each record's continuous
residual [s_K^2, Dv] ('residual'), which model 'hart' trains from.
Prints a JSON summary (files, example counts, the tokenizer's vocab_size and grid) last.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from arjax import cli


def main(argv=None):
  parser = cli.ArgumentParser(prog="python -m arjax.tokenize", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tokenizer_workdir", required=True, help="workdir of the tokenizer run")
  parser.add_argument("--data", required=True, help="data source, e.g. mnist or npz:PATH")
  parser.add_argument("--out", required=True, help="output ArrayRecord path with '{split}'")
  parser.add_argument("--splits", default="train,test", help="comma-separated splits")
  parser.add_argument("--batch_size", type=int, default=256, help="encoding batch size")
  parser.add_argument("--num_examples", type=int, default=-1,
                      help="examples per split (-1: all)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("arjax").setLevel(logging.INFO)
  from arjax.train.token_cache import write_token_cache
  splits = [s.strip() for s in args.splits.split(",") if s.strip()]
  summary = write_token_cache(args.tokenizer_workdir, args.data, args.out, splits,
                              batch_size=args.batch_size, num_examples=args.num_examples)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
