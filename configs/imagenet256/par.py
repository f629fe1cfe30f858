"""PAR: parallelized AR over regions (Wang et al. 2025), ImageNet at 384 px (24 x 24 tokens).

  python -m arjax.inspect --config configs/imagenet256/par.py:size=XL --json   # 775M
  python -m arjax.train --config configs/imagenet256/par.py:size=L --workdir W \
      --config.data.source=array_record:/data/imagenet384_vq16/{split}.array_record

LlamaGen's GPT and VQ-16 tokens (derived from `llamagen.py`), generated at 384 px (24 x 24) and
resized to 256 for evaluation. Order 'par' with 4 regions (2 x 2): the first token of each
region one by one, then groups of 4 tokens sharing an in-region position (147 steps). Between
the two phases the n - 1 = 3 transition slots all carry ONE shared learned query vector (the
model's query embedding, each slot at its target's 2D RoPE position), where PAR learns n - 1
distinct transition tokens: 2 x width fewer parameters than the paper's model (2048 at size L);
the counts below are this layout's. Sizes (layers/heads/width -> params):
L 24/16/1024 343M, XL 36/20/1280 775M, XXL 48/24/1536 1.4B. Paper FID: 3.76 / 2.61 / 2.35.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {  # layers, heads, width, CFG scale (L: not given by methods.md; LlamaGen-L's 2.0).
    "L": llamagen.SIZES["L"][:3] + (2.0,),
    "XL": llamagen.SIZES["XL"][:3] + (1.5,),
    "XXL": llamagen.SIZES["XXL"][:3] + (1.435,),
}


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "par", "L")
  c = llamagen.llamagen_config(*SIZES[args.size], smoke=args.smoke)
  if not args.smoke:
    c.tokenizer.grid = 24             # 384 px / 16.
    c.data.pp = "resize(384)"
  c.model.name = "ordered_ar"
  c.order.name = "par"
  c.order.regions = 4                 # 2 x 2 regions: 4 tokens per parallel step.
  return c
