"""The shared base of the tokenizer configs (configs/tokenizers/*.py): an autoencoder on bundled
MNIST, 28x28 -> a 7x7 latent grid, trained and evaluated by `arjax.train`.

The five quantizers are set up at about the same bits per image (K codes, N tokens, N log2 K):

  vq          K = 512 (L2-normalised codes, LlamaGen), 49 tokens        441 bits
  fsq         levels (8, 8, 8) = 512, 49 tokens                          441 bits
  lfq         9 bits = 512 codes, 49 tokens                              441 bits
  multiscale  K = 32, scales (1, 2, 3, 5, 7) = 88 tokens (VAR)           440 bits
  kl          4 continuous channels per position (MAR-style KL-VAE)      continuous
  titok       fsq's levels behind the 1D-token encoder: 49 learned queries   441 bits
              read the 7x7 grid of 4x4 patches (TiTok-style, no 2D latent grid);
              L2 loss and 1000 steps (see TITOK)

`smoke` shrinks a config to a few CPU steps (under a minute) running the same code.
"""
from __future__ import annotations

import ml_collections

from arjax.config import base_config

QUANTIZERS = {  # name -> (quantizer fields, model overrides)
    "vq": (dict(codebook_size=512, code_dim=8, l2_norm=True), {}),
    "fsq": (dict(levels=[8, 8, 8]), {}),
    "lfq": (dict(code_dim=9, entropy_weight=0.1), {}),
    "multiscale": (dict(codebook_size=32, code_dim=32, scales=[1, 2, 3, 5, 7]),
                   dict(quant_conv=3)),
    "kl": (dict(latent_dim=4, kl_weight=1e-6), dict(quant_conv=1)),
}


# The 1D-token encoder/decoder: as many tokens (49) and bits as the conv rows, a transformer of
# width 64 and depth 2 each side (0.22M parameters; conv fsq: 0.26M). Measured on this recipe
# (docs/tokenizers.md): with the L1 loss the transformer sat at the all-background image (the
# median pixel) and with vq's L2-normalised codebook the 49 tokens stopped depending on the
# image (one code per query); fsq with the L2 loss leaves the mean image after ~150 steps, so
# the 1D row trains 1000 steps (5x the conv rows).
TITOK = dict(num_tokens=49, patch_size=4, width=64, depth=2, num_heads=4)
TITOK_STEPS = 1000


def tokenizer_config(quantizer: str, *, smoke: bool = False, encoder: str = "conv"
                     ) -> ml_collections.ConfigDict:
  """The MNIST tokenizer config for `quantizer` (one of QUANTIZERS) behind `encoder` ('conv'
  or 'titok')."""
  from arjax.models import autoencoder
  if quantizer not in QUANTIZERS:
    raise ValueError(f"tokenizer recipe: unknown quantizer {quantizer!r}; expected one of "
                     f"{sorted(QUANTIZERS)}")
  fields, model = QUANTIZERS[quantizer]
  c = base_config()
  c.data.source = "mnist"
  c.data.pp = ""
  c.model = autoencoder.default_config(quantizer, **fields)
  for key, value in model.items():
    c.model[key] = value
  if encoder == "titok":
    c.model.encoder = "titok"
    for key, value in TITOK.items():
      c.model.titok[key] = value
    c.model.loss.rec = "l2"
  elif encoder != "conv":
    raise ValueError(f"tokenizer recipe: unknown encoder {encoder!r}; expected 'conv' or 'titok'")
  t = c.train
  c.model.ch = 16               # small enough for a few hundred steps on a 2-core CPU.
  t.batch_size = 32
  t.num_steps = TITOK_STEPS if encoder == "titok" else 200
  t.lr = 2e-3
  t.warmup_steps = 50
  t.weight_decay = 0.0          # no decay on codebooks (taming / MAR train with plain Adam).
  t.b1, t.b2 = 0.5, 0.9         # VQGAN's Adam betas.
  t.log_every = 50
  t.eval_every = 100_000        # evaluate once, at the end.
  t.checkpoint_every = 300
  e = c.eval
  e.batch_size = 500
  e.num_examples = 1000         # the first 1000 test images.
  if smoke:
    t.batch_size = 8
    t.num_steps = 4
    t.log_every = 2
    t.checkpoint_every = 2
    e.batch_size = 64
    e.num_examples = 64
    c.model.ch = 8
    c.model.mid_attn = False    # halves the compile time of the train step on a CPU.
    c.model.titok.width, c.model.titok.depth = 16, 1
  return c


# Published tokenizer shapes (ImageNet 256x256, f = 16); see configs/tokenizers/{name}.py.
PAPER_SHAPES = {
    # LlamaGen VQ-16 (tokenizer/tokenizer_image/vq_model.py): 72M parameters (README).
    "llamagen_vq16": dict(
        quantizer=("vq", dict(codebook_size=16384, code_dim=8, l2_norm=True)),
        model=dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, enc_attn=True,
                   dec_attn=True, mid_attn=True, z_channels=256, quant_conv=0),
        loss=dict(rec="l2", disc_weight=0.5, disc_start=20000)),
    # VAR's VQ-VAE (models/vqvae.py, build_vae_var: ch 160, V 4096, Cvae 32, 3x3 quant convs).
    "var_vqvae": dict(
        quantizer=("multiscale", dict(codebook_size=4096, code_dim=32,
                                      scales=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16])),
        model=dict(ch=160, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, enc_attn=True,
                   dec_attn=True, mid_attn=True, z_channels=32, quant_conv=3),
        loss=dict(rec="l1", disc_weight=0.5)),
    # MAR's KL-16 (models/vae.py AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))):
    # attention at the encoder's 16x16 level only, 1x1 quant convs, double_z.
    "mar_kl16": dict(
        quantizer=("kl", dict(latent_dim=16, kl_weight=1e-6, scale_factor=0.2325)),
        model=dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, enc_attn=True,
                   dec_attn=False, mid_attn=True, z_channels=16, quant_conv=1),
        loss=dict(rec="l1", disc_weight=0.5)),
}


def paper_config(name: str, *, smoke: bool = False, lpips: str = ""
                 ) -> ml_collections.ConfigDict:
  """A published tokenizer at its shape: 256x256 RGB, GroupNorm 32, PatchGAN losses as the
  paper, and its LPIPS weight 1.0 when `lpips` names the LPIPS-VGG weight file (without one
  the perceptual loss is off, so that the shape can be inspected anywhere).

  `smoke`: the same layout (levels, attention, quantizer kind) at width 32 on MNIST resized to
  32x32, without the perceptual loss, for a few CPU steps.
  """
  from arjax.models import autoencoder
  if name not in PAPER_SHAPES:
    raise ValueError(f"unknown paper tokenizer {name!r}; expected one of {sorted(PAPER_SHAPES)}")
  shape = PAPER_SHAPES[name]
  qname, qfields = shape["quantizer"]
  c = tokenizer_config(qname, smoke=smoke)
  c.model = autoencoder.default_config(qname, **qfields)
  c.model.image_size, c.model.channels, c.model.num_groups = 256, 3, 32
  for key, value in shape["model"].items():
    c.model[key] = value
  for key, value in shape["loss"].items():
    c.model.loss[key] = value
  if lpips:
    c.model.loss.perceptual_weight, c.model.loss.perceptual_weights = 1.0, lpips
  c.data.source = "tfds:imagenet2012"   # any source of 256x256 RGB images (data.pp to get them).
  c.train.lr, c.train.b1, c.train.b2 = 1e-4, 0.5, 0.9
  c.train.batch_size = 128
  c.train.num_steps = 400_000
  if smoke:
    c.data.source, c.data.pp = "mnist", "resize(32)"
    c.model.image_size, c.model.channels = 32, 1
    c.model.ch, c.model.num_groups = 16, 8
    c.model.loss.perceptual_weight = 0.0
    c.model.loss.disc_start = 2
    c.model.loss.disc_channels, c.model.loss.disc_layers, c.model.loss.disc_groups = 16, 2, 8
    if qname == "multiscale":
      c.model.quantizer.scales = [1, 2]      # 32 / 16 = a 2x2 latent map.
      c.model.quantizer.codebook_size = 64
    if qname == "vq":
      c.model.quantizer.codebook_size = 64
    c.train.batch_size, c.train.num_steps = 8, 4
  return c
