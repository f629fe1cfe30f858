"""Paper-shape tokenizer 'mar_kl16' (ImageNet 256x256, downsampling 16;
arjax.recipes.tokenizers).

  python -m arjax.inspect --config configs/tokenizers/mar_kl16.py --json
  python -m arjax.train --config configs/tokenizers/mar_kl16.py:smoke --workdir /tmp/p_mar_kl16
  python -m arjax.train --config configs/tokenizers/mar_kl16.py:lpips=lpips.npz --workdir W \
      --config.data.source=... (256x256 RGB images)

Parameter counts (encoder + quantizer + decoder, discriminator excluded) are checked against the
official architecture in tests/tokenizers/test_paper_shapes.py; see docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import paper_config


def get_config(arg=None):
  args = parse_arg(arg, lpips="")  # lpips=PATH: LPIPS-VGG weights (perceptual loss on, 1.0)
  return paper_config("mar_kl16", smoke=args.smoke, lpips=args.lpips)
