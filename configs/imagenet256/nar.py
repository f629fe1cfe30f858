"""NAR: next-neighbour AR (He et al. 2025), ImageNet 256, paper sizes.

  python -m arjax.inspect --config configs/imagenet256/nar.py:size=L --json   # 372M
  python -m arjax.train --config configs/imagenet256/nar.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

LlamaGen's GPT and VQ-16 tokens (derived from `llamagen.py`) under NAR's proximity mask (order
'nar'), with the right-neighbour head after the stack and one extra block plus a lower-neighbour
head (model 'nar'); 31 sampling steps (one anti-diagonal each). Sizes (layers/heads/width ->
params, the extra block not counted in the layers): B 12/12/768 130M, M 18/16/1024 290M,
L 24/16/1024 372M, XL 36/20/1280 816M, XXL 48/24/1536 1.46B.
Paper FID (31 steps): 4.65 / 3.27 / 3.06 / 2.70 / 2.58.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {k: llamagen.SIZES[k][:3] for k in ("B", "L", "XL", "XXL")}  # layers, heads, width.
SIZES["M"] = (18, 16, 1024)


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "nar", "B")
  c = llamagen.llamagen_config(*SIZES[args.size], 2.0, smoke=args.smoke)
  c.model.name = "nar"
  c.order.name = "nar"
  if args.smoke:
    c.train.batch_size, c.train.num_steps, c.train.lr = 8, 4, 1e-3
  return c
