"""MaskGIL: masked generation with a bidirectional LLaMA (Xin et al. 2025), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/maskgil.py:size=L --json   # 343M
  python -m arjax.train --config configs/imagenet256/maskgil.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

LlamaGen's GPT and VQ-16 tokens (derived from `llamagen.py`) without the causal mask (order
'masked'); a learned [MASK] embedding; 1D RoPE as in the released code (the paper states 2D).
Training masks arccos(r)/(pi/2) of the tokens, loss on every token with label smoothing 0.1.
Sampling: 8 steps, arccos reveal counts, confidence with annealed Gumbel noise, CFG
(1 + w_t) l_c - w_t l_u with w_t = 3 t / (T - 1). Sizes (layers/heads/width -> params):
B 12/12/768 111M, L 24/16/1024 343M, XL 36/20/1280 775M, XXL 48/24/1536 1.4B.
README FID (8 steps): 5.64 / 4.01 / 3.90 / 3.71.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {k: llamagen.SIZES[k][:3] for k in ("B", "L", "XL", "XXL")}  # layers, heads, width.


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "maskgil", "B")
  c = llamagen.llamagen_config(*SIZES[args.size], 4.0, smoke=args.smoke)
  c.model.name = "ordered_ar"
  c.model.head.label_smoothing = 0.1
  c.model.backbone.position = "rope1d"  # the released code's RoPE.
  c.order.name = "masked"
  c.order.mask_schedule = "arccos"    # training mask ratio arccos(r) / (pi / 2).
  c.order.loss_on = "all"             # CE on every token (the released code).
  c.order.reveal = "maskgil"          # reveal counts proportional to arccos(linspace(1, 0, T)).
  c.order.num_steps = 8               # sampling steps.
  c.eval.cfg_schedule = "linear"      # scale 1 + 3 t / (T - 1): 1 -> 4 over the steps.
  c.eval.cfg_by = "steps"             # progress measured in steps, not tokens.
  t = c.train
  t.lr = 1e-4
  t.b1, t.b2 = 0.9, 0.96
  t.weight_decay = 1e-5
  if args.smoke:
    t.batch_size, t.num_steps, t.lr = 8, 4, 1e-3
  return c
