"""xAR: next-entity prediction with noisy-context flow matching (Ren et al. 2025), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/xar.py:size=B --json    # 172M
  python -m arjax.train --config configs/imagenet256/xar.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_kl16/{split}.array_record
  python -m arjax.train --config configs/imagenet256/xar.py:smoke --workdir /tmp/xar_smoke

Tokens: KL-16 latents of MAR's VAE (16x16 = 256 tokens of 16 channels), pre-tokenized (tokenizer
'cached', latent_dim 16). Model 'xar' (arjax/models/xar.py): entities are 8x8 cells (4 AR steps,
the official code's clusters=4; `entity=subsample|scale` and `entity_size=K` pick others),
encoder + decoder blocks with per-slot adaLN on class + flow-time embeddings (B 8+8 at 768, 12
heads; L 16+16 at 1024, 16 heads; H 20+20 at 1280, 16 heads; SwiGLU width int(8 D / 3)), 2D RoPE
and learned positions, a Linear velocity output. Parameters 172,584,976 /
608,256,016 / 1,185,802,256 (the paper's 172M / 608M / 1.1B; the official modules' 172,638,224 /
608,397,968 / 1,186,024,096: the shared block has RMSNorm weights and no SwiGLU biases, -0.031 /
-0.023 / -0.019 %); the count includes the velocity output and excludes the VAE. Training: logit-normal flow time per entity,
every entity noised (noisy context), velocity MSE; class dropout 0.1; AdamW (0.9, 0.96), lr 5e-5 x batch /
256 (4e-4 at 2048), 100 warmup epochs then constant, 800 epochs, grad clip 1, EMA 0.9999,
weight decay 0.02 (official main_mar.py defaults). Sampling ('next_entity'): the official CFG
w = 2.7 / 2.3 / 2.2 ramped linearly over the entities, 40 / 50 / 50 steps of the official
Euler-Maruyama sampler (model.sde; `--config.model.sde=False` integrates the ODE with
model.head.solver). Paper FID 1.72 / 1.28 / 1.24.

`:smoke` runs on a fresh clone: the continuous values of the 14x14 area-averaged MNIST pixels
(pixel tokenizer, continuous, one channel), 7x7 cells (4 entities), a tiny encoder-decoder.
"""
from arjax.config import ConfigDict, base_config, parse_arg, sibling_config

mar = sibling_config(__file__, "mar.py")  # the KL-16 tokens, the training recipe, the smoke.

ENTITIES = ("cell", "subsample", "scale")
SIZES = {  # layers (encoder = decoder), heads, width, CFG, flow steps.
    "B": (8, 12, 768, 2.7, 40),
    "L": (16, 16, 1024, 2.3, 50),
    "H": (20, 16, 1280, 2.2, 50),
}


def get_config(arg=None):
  args = parse_arg(arg, size="B", entity="cell", entity_size=0)
  if args.size not in SIZES:
    raise ValueError(f"xar size={args.size!r}; expected one of {sorted(SIZES)}")
  if args.entity not in ENTITIES:
    raise ValueError(f"xar entity={args.entity!r}; expected one of {list(ENTITIES)}")
  layers, heads, width, cfg, steps = SIZES[args.size]
  c = base_config()
  mar.kl16_tokens(c)
  m = c.model
  m.name = "xar"
  m.num_classes = 1000
  m.class_dropout = 0.1             # official label_drop_prob.
  m.entity = args.entity
  m.entity_size = args.entity_size or 8   # 8x8 cells: 4 entities (official clusters=4).
  m.decoder_layers = layers
  m.sde = True                      # the official Euler-Maruyama sampler (smoke: Euler ODE).
  b = m.backbone
  b.num_layers, b.num_heads, b.dim = layers, heads, width
  b.mlp_dim = int(width * 4 * 2 / 3)  # timm SwiGLU hidden of the official blocks.
  b.norm, b.mlp, b.bias, b.norm_eps = "rmsnorm", "swiglu", True, 1e-6
  b.adaln = True                    # per-slot shift/scale/gate from class + time.
  b.position = "rope2d"             # plus the model's learned position tables.
  b.resid_dropout = 0.1             # official proj_dropout (attn_dropout 0.1 has no counterpart).
  b.ffn_dropout = 0.1
  h = m.head = ConfigDict()
  h.name = "flow"                   # its time sampling and solver; the network is the backbone.
  h.num_sampling_steps = steps
  h.solver = "euler"
  h.time_sampling = "logit_normal"  # t = sigmoid(n), n ~ N(0, 1) per entity.
  # lr 5e-5 x 2048 / 256; the official AdamW betas (0.9, 0.96) and grad clip 1.
  mar.paper_training(c.train, lr=4e-4, epochs=800, b2=0.96, grad_clip=1.0)
  e = c.eval
  e.cfg_scale = cfg
  e.cfg_schedule = "linear"
  e.cfg_by = "steps"                # 1 + (w - 1) k / (E - 1) for entity k.
  e.temperature = 1.0
  if args.smoke:
    mar.mnist_smoke(c, resolution=14)
    m.entity_size = args.entity_size or 7  # 2x2 cells of 7x7 tokens.
    m.decoder_layers = 1
    m.sde = False
    b.num_layers, b.num_heads, b.dim, b.mlp_dim = 1, 2, 32, 64
    b.resid_dropout = b.ffn_dropout = 0.0
    h.num_sampling_steps = 4
  return c
