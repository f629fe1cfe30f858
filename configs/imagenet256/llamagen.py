"""LlamaGen class-conditional raster AR at ImageNet 256 (Sun et al. 2024), paper sizes.

  python -m arjax.inspect --config configs/imagenet256/llamagen.py:size=L --json
  python -m arjax.train --config configs/imagenet256/llamagen.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

Tokens: LlamaGen's VQ-16 (16x16 = 256 tokens, 16384 codes), given pre-tokenized by
`python -m arjax.tokenize` (tokenizer issue). Sizes (layers/heads/width -> params):
B 12/12/768 111M, L 24/16/1024 343M, XL 36/20/1280 775M, XXL 48/24/1536 1.4B, 3B 24/32/3200 3.1B.
Paper results (256px, CFG): FID 5.46 / 3.80 / 3.39 / 3.09 / 3.05.
`:smoke` keeps the LlamaGen layout at a tiny size on bundled MNIST pixels.

`llamagen_config` is the shared base of the paper-size configs derived from LlamaGen (RandAR,
ARPG, MaskGIL, NAR, PAR, and the tokens/training defaults of RAR and LPD).
"""
from arjax.config import base_config, parse_arg

SIZES = {  # layers, heads, width, CFG scale used by the paper.
    "B": (12, 12, 768, 2.0),
    "L": (24, 16, 1024, 2.0),
    "XL": (36, 20, 1280, 1.75),
    "XXL": (48, 24, 1536, 1.75),
    "3B": (24, 32, 3200, 1.65),
}


def parse_size(arg, sizes, method: str, default: str):
  """Parses 'size=L[,smoke]' and checks the size against the method's table."""
  args = parse_arg(arg, size=default)
  if args.size not in sizes:
    raise ValueError(f"{method} size={args.size!r}; expected one of {sorted(sizes)}")
  return args


def get_config(arg=None):
  args = parse_size(arg, SIZES, "llamagen", "B")
  return llamagen_config(*SIZES[args.size], smoke=args.smoke)


def llamagen_config(layers: int, heads: int, width: int, cfg_scale: float, smoke: bool = False):
  """LlamaGen's GPT, tokens and training at a given size (`smoke`: tiny, on MNIST pixels)."""
  args = parse_arg("smoke" if smoke else "")
  c = base_config()
  # Tokens of LlamaGen's VQ-16 tokenizer: a 16x16 grid of 16384 codes.
  if not args.smoke:
    c.tokenizer.name = "cached"
    c.tokenizer.vocab_size = 16384
    c.tokenizer.grid = 16
  c.model.num_classes = 1000 if not args.smoke else 10
  c.model.class_dropout = 0.1
  c.model.token_dropout = 0.1
  b = c.model.backbone
  b.num_layers, b.num_heads, b.dim = layers, heads, width
  b.multiple_of = 256           # LlamaGen's SwiGLU rounding.
  b.position = "rope2d"
  b.rope_null = "zero"          # LlamaGen zeroes the class token's query and key.
  b.resid_dropout = 0.1
  b.ffn_dropout = 0.1
  b.dtype = "bfloat16"
  c.data.source = "tfds:imagenet2012"
  c.data.pp = "resize(256)"
  t = c.train
  t.batch_size = 256
  t.lr = 1e-4
  t.weight_decay = 0.05
  t.b1, t.b2 = 0.9, 0.95
  t.grad_clip = 1.0
  t.num_steps = 300 * 5005      # 300 epochs of 1.28M images at batch 256.
  t.warmup_steps = 0
  t.end_lr_ratio = 1.0          # constant learning rate.
  c.eval.cfg_scale = cfg_scale
  if args.smoke:
    c.data.source = "mnist"
    c.data.pp = ""
    b.num_layers, b.num_heads, b.dim = 1, 2, 32
    b.dtype = "float32"
    t.batch_size, t.num_steps, t.log_every, t.checkpoint_every = 8, 4, 2, 1000
    t.lr = 1e-3
    c.eval.num_examples, c.eval.batch_size, c.eval.samples_per_class = 64, 32, 1
  return c
