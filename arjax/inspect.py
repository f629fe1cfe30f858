"""python -m arjax.inspect --config PATH[:ARGS] [--json]

Prints the parameter count (from jax.eval_shape: nothing is allocated) and FLOPs per token and
per train step of a config.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict


def inspect_config(config) -> Dict[str, Any]:
  from arjax.models import build_model
  from arjax.train.flops import model_flops
  from arjax.train.functional import FunctionalModel

  fm = FunctionalModel.abstract(lambda: build_model(config, seed=0))
  groups: Dict[str, int] = {}
  for name, sub in fm.abstract_params.items():
    groups[name] = sum(int(x.size) for x in __import__("jax").tree.leaves(sub))
  out = {"model": config.model.name, "params": fm.param_count(), "params_by_module": groups}
  out.update(model_flops(config))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m arjax.inspect", description=__doc__)
  parser.add_argument("--config", required=True, help="config file[:args]")
  parser.add_argument("--json", action="store_true", help="print JSON only")
  parser.add_argument("overrides", nargs="*", help="field=value config overrides")
  args = parser.parse_args(argv)
  from arjax.config import load_config
  config = load_config(args.config, args.overrides)
  out = inspect_config(config)
  if args.json:
    print(json.dumps(out))
  else:
    print(f"{args.config}: {out['params']:,} parameters ({out['params'] / 1e6:.1f}M)")
    for k, v in out["params_by_module"].items():
      print(f"  {k:20s} {v:>15,}")
    print(f"forward FLOPs/token {out['forward_per_token']:.4g}; train FLOPs/step "
          f"{out['train_flops_per_step']:.4g} ({out['tokens_per_step']} tokens)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
