"""python -m arjax.convert NAME --checkpoint FILE --workdir DIR [--size S] [--config PATH]
                          [--vae FILE] [--vae_override F=V] [--config.FIELD=VALUE ...]

Converts a released checkpoint into an arjax workdir that `arjax.sample` and `arjax.evaluate`
load. NAME: llamagen (LlamaGen c2i GPT, sizes B / L / XL / XXL / 3B); var (VAR var_d{d}.pth,
sizes 16 / 20 / 24 / 30, with its VQ-VAE --vae vae_ch160v4096z32.pth, written to
WORKDIR/tokenizer); mar (MAR checkpoint-last.pth, sizes B / L / H, its EMA weights, with its
KL-16 VAE --vae kl16.ckpt written to WORKDIR/tokenizer); far (FAR checkpoint-last.pth, sizes
B / L / H, its EMA weights, the head's depth and width by --config.model.head.*, with --vae as
mar); mar_vae (MAR's kl16.ckpt alone as
--checkpoint: a tokenizer run of configs/tokenizers/mar_kl16.py); sdar (SDAR's conversion: --checkpoint is an AR run of model
diffusion_lm, written under the block-diffusion --config, e.g. configs/text/bd3lm.py:block=4).
The checkpoint is read without torch (.pt/.pth zip or legacy format, or an .npz of the state dict).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from arjax import cli


def main(argv=None):
  from arjax.convert import CONVERTERS
  p = cli.ArgumentParser(prog="python -m arjax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", help=f"one of {CONVERTERS.names()}")
  p.add_argument("--checkpoint", required=True, help="released checkpoint file")
  p.add_argument("--workdir", required=True, help="empty directory to write")
  p.add_argument("--size", default=None, help="paper size of the checkpoint, e.g. L")
  p.add_argument("--config", default=None, help="config file (default: the paper's)")
  p.add_argument("--vae", default=None, help="var: the VQ-VAE checkpoint (vae_ch160v4096z32.pth); "
                 "mar, far: the KL-16 VAE (kl16.ckpt)")
  p.add_argument("--vae_override", action="append", default=[],
                 help="var, mar, far: a field=value override of the VAE's config (repeatable)")
  args, extra = p.parse_known_args(argv)
  # The generator's config is known only once NAME and --size are: its --config.FIELD=VALUE
  # overrides are handed to arjax.config.load_config, which parses them with config_flags.
  args.overrides = []
  for item in extra:
    if not item.startswith("--config.") or "=" not in item:
      p.error(f"unrecognized argument {item!r}; config overrides are --config.FIELD=VALUE")
    args.overrides.append(item)
  try:
    convert = CONVERTERS.get(args.name)
  except KeyError as e:
    p.error(str(e))
  try:
    workdir = convert(args)
  except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"workdir": workdir}))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  sys.exit(cli.run(main))
