"""RAR: randomized-order AR with annealing (Yu et al. 2024), ImageNet 256, paper sizes.

  python -m arjax.inspect --config configs/imagenet256/rar.py:size=L --json     # 461M
  python -m arjax.train --config configs/imagenet256/rar.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_maskgit_vq/{split}.array_record

Tokens: MaskGIT-VQGAN (16x16 = 256 tokens, 1024 codes), pre-tokenized. Backbone: ViT blocks
(LayerNorm, biases, GELU MLP, QK-LayerNorm) under a causal mask, adaLN in every block on class
embedding + per-slot "timestep" embedding, adaLN before the head; a learned [cls] slot before
the class; learned position table and RAR's target-aware table (both 256 + 1024 rows, as the
released model). All sizes 16 heads. Sizes (layers/width/mlp -> params):
B 24/768/3072 261M, L 24/1024/4096 461M, XL 32/1280/5120 955M, XXL 40/1408/6144 1.5B.
Paper FID (power-cosine CFG): 1.95 / 1.70 / 1.50 / 1.48.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {  # layers, width, mlp width, (CFG scale, power-cosine exponent, temperature).
    "B": (24, 768, 3072, (16.0, 2.75, 1.0)),
    "L": (24, 1024, 4096, (15.5, 2.5, 1.02)),
    "XL": (32, 1280, 5120, (6.9, 1.5, 1.02)),
    "XXL": (40, 1408, 6144, (8.0, 1.2, 1.02)),
}
STEPS = 250_000  # 400 epochs at batch 2048.


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "rar", "B")
  layers, width, mlp, (cfg_scale, power, temperature) = SIZES[args.size]
  c = llamagen.llamagen_config(layers, 16, width, cfg_scale, smoke=args.smoke)
  if not args.smoke:
    c.tokenizer.vocab_size = 1024     # MaskGIT-VQGAN codebook.
  c.model.name = "ordered_ar"
  c.order.name = "random"
  c.order.anneal_start = STEPS // 2   # r = 1 until epoch 200 ...
  c.order.anneal_end = STEPS * 3 // 4  # ... then linearly to 0 at epoch 300 (raster after).
  c.order.sample_order = "raster"     # samples in raster order with a KV cache.
  m = c.model
  m.learned_pos = True                # absolute position table ...
  m.target_aware = True               # ... plus the target-aware table.
  m.start_token = True                # learned [cls] slot before the class.
  m.timestep_cond = True              # adaLN condition: class + per-slot embedding.
  m.final_adaln = True                # adaLN before the head.
  m.pos_table_extra = 1024            # the released tables have 256 + 1024 rows ...
  m.slot_table_extra = 99             # ... and the per-slot table 256 + 100 (257 slots here).
  m.token_dropout = 0.0
  b = m.backbone
  b.mlp_dim = mlp
  b.norm, b.norm_eps, b.mlp, b.bias = "layernorm", 1e-6, "gelu", True  # ViT blocks.
  b.qk_norm = True
  b.adaln = True
  b.position = "none"                 # positions come from the learned tables.
  t = c.train
  t.batch_size = 2048
  t.num_steps = STEPS
  t.lr = 4e-4
  t.b1, t.b2 = 0.9, 0.96
  t.weight_decay = 0.03
  t.warmup_steps = STEPS // 4         # 100 epochs.
  t.end_lr_ratio = 1e-5 / 4e-4        # cosine to 1e-5.
  c.eval.cfg_schedule = "power_cosine"  # RAR's guidance schedule.
  c.eval.cfg_power = power            # its exponent.
  c.eval.temperature = temperature
  if args.smoke:
    b.num_layers, b.num_heads, b.dim, b.mlp_dim = 1, 2, 32, 64
    c.order.anneal_start, c.order.anneal_end = 1, 3
    t.batch_size, t.num_steps, t.warmup_steps, t.lr = 8, 4, 0, 1e-3
  return c
