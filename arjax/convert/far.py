"""FAR's training checkpoints (Yu et al. 2025; yuhuUSTC/FAR, main_far.py's checkpoint-last.pth)
-> an arjax workdir of `configs/imagenet256/far.py:size=B|L|H` (model 'far', diffusion head).

  python -m arjax.convert far --checkpoint checkpoint-last.pth --size L --workdir W \
      --config.model.head.depth=3          # the official train.sh's FAR-L: --diffloss_d 3
  python -m arjax.convert far --checkpoint checkpoint-last.pth --vae kl16.ckpt --size L \
      --workdir W --config.model.head.depth=3   # + MAR's KL-16 VAE in W/tokenizer

FAR's module is MAR's (models/far.py keeps MAR's parameter names; arjax.convert.mar maps them,
EMA weights first, read without torch) with two differences:

  class_emb.weight [1000, D]                  the table has 1000 rows whatever --class_num;
                                              the first model.num_classes are taken
  diffloss.net.index_cond_embed [W, 1] (+ bias) -> level_embed (kernel [1, W], bias [W]): the
                                              Linear(k) of the frequency level added to the
                                              denoising MLP's condition (arjax.models.far)

`mask_token` is kept (FAR's default `mask=False` never uses it; neither does arjax's 'far'). The
head depth and width of a released FAR checkpoint are whatever it was trained with (the official
train.sh gives 6 x 1024 for FAR-B and 3 x 1024 for FAR-L and FAR-H; configs/imagenet256/far.py's
FAR-L head is sized to the README's parameter count instead): set them with --config.model.head.depth / width; a mismatch fails
with one message listing every differing tensor. Parity with the official code on tiny random
weights: tests/convert/test_far.py (tests/convert/fixtures/README.md). No released FAR
checkpoint was converted here.

Legend: D encoder width, W width of the denoising MLP, k the level.
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from arjax.convert.mar import _Reader, convert_mar, mar_tree
from arjax.convert.registry import CONVERTERS

CLASS_ROWS = 1000   # FAR's nn.Embedding(1000, D), independent of class_num.


def far_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """FAR state dict -> arjax 'far' parameters (nested dict of float32 numpy arrays) for the model
  `config` builds (diffusion head). All problems are reported in one ValueError."""
  from arjax.models.far import FARFields
  r = _Reader(state_dict)
  params = mar_tree(r, config, "far", "FAR", class_rows=CLASS_ROWS, fields_cls=FARFields)
  params["level_embed"] = r.linear("diffloss.net.index_cond_embed", 1, int(config.model.head.width))
  r.finish("FAR", "wrong --size, head width/depth (--config.model.head.depth), latent size or "
           "buffer?")
  return params


def convert_far(checkpoint: str, workdir: str, size: str = "B",
                config_path: str = "configs/imagenet256/far.py", overrides=(), vae=None,
                vae_overrides=()) -> str:
  """Reads a FAR checkpoint (and with `vae` MAR's kl16.ckpt) and writes an arjax workdir."""
  return convert_mar(checkpoint, workdir, size, config_path, overrides, vae, vae_overrides,
                     params_fn=far_params)


@CONVERTERS.register("far")
def _cli(args):
  return convert_far(args.checkpoint, args.workdir, args.size or "B",
                     args.config or "configs/imagenet256/far.py", args.overrides,
                     getattr(args, "vae", None), getattr(args, "vae_override", ()))
