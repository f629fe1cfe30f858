"""SDAR's conversion of a trained AR text model into a block-diffusion model (Cheng et al. 2025:
continued training of the AR weights under the block-diffusion objective).

  python -m arjax.convert sdar --checkpoint AR_WORKDIR --config configs/text/bd3lm.py:block=4 \
      --workdir W [field=value ...]
  python -m arjax.train --config configs/text/bd3lm.py:block=4 --workdir W

AR_WORKDIR is a run of model 'diffusion_lm' with objective 'ar' (configs/text/dlm.py:
objective=ar). Every objective of 'diffusion_lm' has the same parameter tree, so its parameters
(the EMA's when the run kept one) are written unchanged as step 0 of W under the block config;
training W then continues them with a fresh optimizer (arjax.convert.workdir.write_workdir).
"""
from __future__ import annotations

import os

from arjax.convert.registry import CONVERTERS


def convert_sdar(ar_workdir: str, workdir: str, config_path: str, overrides=()) -> str:
  from arjax.config import load_config
  from arjax.convert.workdir import write_workdir
  from arjax.loading import load
  if not os.path.isfile(os.path.join(ar_workdir, "config.json")):
    raise FileNotFoundError(f"--checkpoint {ar_workdir!r}: not a workdir (no config.json); "
                            "sdar converts an AR run of model 'diffusion_lm'")
  fm, variables, ar_config = load(ar_workdir)
  if ar_config.model.name != "diffusion_lm" or ar_config.model.objective != "ar":
    raise ValueError(f"--checkpoint {ar_workdir!r} is model {ar_config.model.name!r} objective "
                     f"{ar_config.model.get('objective')!r}; sdar needs 'diffusion_lm' with "
                     "objective 'ar'")
  config = load_config(config_path, overrides)
  if config.model.name != "diffusion_lm" or config.model.objective != "bd3lm":
    raise ValueError(f"--config {config_path!r} builds model {config.model.name!r} objective "
                     f"{config.model.get('objective')!r}; sdar writes a 'diffusion_lm' 'bd3lm'")
  params, _ = fm.split_model_state(variables)
  return write_workdir(config, params, workdir, source=os.path.abspath(ar_workdir))


@CONVERTERS.register("sdar")
def _cli(args):
  if not args.config:
    raise ValueError("sdar needs --config (the block model's, e.g. configs/text/bd3lm.py:block=4)")
  return convert_sdar(args.checkpoint, args.workdir, args.config, args.overrides)
