"""ARPG: randomized parallel decoding with a two-pass decoder (Li et al. 2025), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/arpg.py:size=L --json   # 320M
  python -m arjax.train --config configs/imagenet256/arpg.py:size=L --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

LlamaGen's Llama blocks and VQ-16 tokens (derived from `llamagen.py`): a causal content stack
and a query stack of cross-attention blocks (n/2 each) reading one shared K/V projection
(model 'arpg'); random order per sample in training and sampling; 64 parallel steps with the
arccos schedule (the repo's recommendation), constant CFG. Sizes (layers/heads/width ->
params): L 12+12/16/1024 320M, XL 18+18/20/1280 719M, XXL 24+24/24/1536 1.3B.
Paper FID (v1, 64 steps): 2.44 / 2.10 / 1.94.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {  # total layers (two equal stacks), heads, width, CFG scale (README, 64 steps).
    "L": (24, 16, 1024, 4.5),
    "XL": (36, 20, 1280, 6.0),
    "XXL": (48, 24, 1536, 7.5),
}
STEPS = 400 * 1251  # 400 epochs at batch 1024.


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "arpg", "L")
  c = llamagen.llamagen_config(*SIZES[args.size], smoke=args.smoke)
  c.model.name = "arpg"
  c.order.name = "arpg"               # a random permutation per sample, never annealed.
  c.order.schedule = "arpg_arccos"    # mask_len = floor(N arccos((k+1)/K) / (pi/2)).
  c.order.num_steps = 64              # parallel decoding steps.
  t = c.train
  t.batch_size = 1024
  t.num_steps = STEPS
  t.lr = 4e-4
  t.weight_decay = 0.05
  t.warmup_steps = STEPS // 4         # 100 epochs.
  t.end_lr_ratio = 1e-5 / 4e-4        # cosine to 1e-5.
  if args.smoke:
    c.model.backbone.num_layers = 2   # 1 + 1.
    c.order.num_steps = 16
    t.batch_size, t.num_steps, t.warmup_steps, t.lr = 8, 4, 0, 1e-3
  return c
