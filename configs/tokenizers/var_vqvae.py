"""Paper-shape tokenizer 'var_vqvae' (ImageNet 256x256, downsampling 16;
arjax.recipes.tokenizers).

  python -m arjax.inspect --config configs/tokenizers/var_vqvae.py --json
  python -m arjax.train --config configs/tokenizers/var_vqvae.py:smoke --workdir /tmp/p_var_vqvae
  python -m arjax.train --config configs/tokenizers/var_vqvae.py:lpips=lpips.npz --workdir W \
      --config.data.source=... (256x256 RGB images)

Parameter counts (encoder + quantizer + decoder, discriminator excluded) are checked against the
official architecture in tests/tokenizers/test_paper_shapes.py; see docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import paper_config


def get_config(arg=None):
  args = parse_arg(arg, lpips="")  # lpips=PATH: LPIPS-VGG weights (perceptual loss on, 1.0)
  return paper_config("var_vqvae", smoke=args.smoke, lpips=args.lpips)
