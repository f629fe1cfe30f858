"""Tokenizer autoencoders trained by the one trainer: encoder -> quantizer -> decoder.

    images -> encoder -> [quant_conv] -> quantizer -> [post_quant_conv] -> decoder -> images

The encoder/decoder pair is named by `model.encoder` (registry `ENCODERS`: 'conv', the VQGAN CNN
of `arjax.tokenizers.conv`; 'titok', 1D tokens from learned queries, `arjax.tokenizers.titok`)
and the quantizer by `model.quantizer.name`
(`arjax.tokenizers.quantizers`: vq, fsq, lfq, multiscale, kl). This one model covers VQGAN /
LlamaGen VQ-16 (Esser et al. 2021; Sun et al. 2024), VAR's multi-scale VQ-VAE (Tian et al. 2024),
MAR's KL-16 (Li et al. 2024) and FSQ / LFQ tokenizers.

Loss (VQGAN's recipe, as LlamaGen trains it):
    rec_weight * |x - x_rec|_1 (or squared) + perceptual_weight * LPIPS(x, x_rec)
    + quantizer loss (commitment / codebook / entropy / KL)
    + [step >= disc_start] * disc_weight * lambda * (-mean D(x_rec))          (generator)
    + [step >= disc_start] * hinge(D(x), D(x_rec))                            (discriminator)
with lambda VQGAN's adaptive weight w.r.t. the decoder's last conv kernel.

The model is also a `Tokenizer` (vocab_size, grid, tokens_per_image, encode, decode,
grid_positions) over uint8 images, so generators and the token cache use it directly. Its
class attribute `evaluation = 'tokenizer'` makes the trainer evaluate reconstructions
(arjax.train.evaluation) instead of bits/dim and samples.

Quantizer state updated in place by a train=True forward pass (VQ EMA codebook and counts,
dead-code usage averages) is model state: the trainer carries it between steps beside the
parameters (`TrainState.model_state`, arjax.core.functional), checkpoints it, and evaluation,
sampling and the token cache read the trained values. Dead-code restart needs the EMA codebook
(`ema_decay > 0`): a restart writes codebook rows, and a gradient codebook belongs to the
optimizer.

Legend: B batch, H/W image size (model.image_size), C image channels, h/w latent grid,
Z latent channels, N tokens per image, K codebook size.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from arjax.core.checks import check_array
from arjax.models.registry import MODELS
from arjax.registry import Registry, read_fields
from arjax.registry import defaults as registry_defaults
from arjax.tokenizers import losses, quantizers
from arjax.tokenizers.conv import Conv, ConvConfig, ConvDecoder, ConvEncoder, check_image_size

# name -> builder(m, titok, image_channels, z_in, z_out, rngs) -> (encoder, decoder, grid), with
# m the AutoencoderFields (conv reads its conv fields) and titok the TitokFields:
# encoder(x [B, H, W, C], train=) -> [B, h, w, z_in]; decoder(z [B, h, w, z_out], train=) ->
# [B, H, W, C] with `features`, `project(h, kernel)` and `last_kernel` for the adaptive weight.
ENCODERS: Registry = Registry("autoencoder encoder")


@dataclasses.dataclass(frozen=True)
class TitokFields:
  """`config.model.titok`: the 1D-token encoder/decoder (model.encoder='titok')."""
  num_tokens: int = 32            # N learned latent tokens (a 1 x N token grid).
  patch_size: int = 4             # patch side of the grid the queries read.
  width: int = 64                 # transformer width D.
  depth: int = 2                  # transformer blocks in the encoder and in the decoder.
  num_heads: int = 4              # attention heads.


@dataclasses.dataclass(frozen=True)
class LossFields:
  """`config.model.loss`: the autoencoder's losses (VQGAN's recipe)."""
  rec: str = "l1"                 # reconstruction loss: l1 | l2.
  rec_weight: float = 1.0         # weight of the reconstruction loss.
  perceptual_weight: float = 0.0  # LPIPS-VGG weight (0: off; LlamaGen 1.0).
  perceptual_weights: str = ""    # .npz of LPIPS-VGG weights (layout: tokenizers.losses).
  disc_weight: float = 0.0        # adversarial weight (0: no discriminator; VQGAN/LlamaGen 0.5).
  disc_start: int = 0             # step from which the adversarial losses count.
  disc_adaptive: bool = True      # VQGAN's adaptive weight on the generator's GAN loss.
  disc_max_weight: float = 1e4    # clip of the adaptive weight.
  disc_channels: int = 64         # PatchGAN base channels.
  disc_layers: int = 3            # PatchGAN stride-2 layers (patch size grows with it).
  disc_groups: int = 32           # PatchGAN GroupNorm groups.


@dataclasses.dataclass(frozen=True)
class AutoencoderFields:
  """`config.model` of 'autoencoder'; sub-nodes: the quantizer (named by its `name`), the 1D
  encoder's `titok` and the `loss`."""
  SUBNODES = {"quantizer": quantizers.QUANTIZERS, "titok": TitokFields, "loss": LossFields}
  image_size: int = 28            # H = W of the training images.
  channels: int = 1               # C, image channels.
  encoder: str = "conv"           # encoder/decoder pair: conv (2D grid) | titok (1D tokens).
  ch: int = 32                    # conv: base channels.
  ch_mult: Tuple[int, ...] = (1, 2, 2)  # conv: per-level multipliers; len - 1 halvings (28 -> 7).
  num_res_blocks: int = 1         # conv: residual blocks per level (decoder: one more).
  enc_attn: bool = False          # conv: attention at the lowest encoder level.
  dec_attn: bool = False          # conv: attention at the lowest decoder level.
  mid_attn: bool = True           # conv: attention between the two middle blocks.
  num_groups: int = 8             # conv: GroupNorm groups (the papers use 32).
  dropout: float = 0.0            # conv: dropout inside residual blocks.
  z_channels: int = 32            # latent channels the quantizer reads (KL with quant_conv: x2).
  quant_conv: int = 0             # kernel of convs around the quantizer (0: none; VAR 3, LDM 1).


def default_config(quantizer: str = "vq", **quantizer_fields) -> ml_collections.ConfigDict:
  """`config.model` of the autoencoder with quantizer `quantizer` (its fields overridden): every
  declared field at its default (AutoencoderFields, TitokFields, LossFields)."""
  m = ml_collections.ConfigDict()
  m.name = "autoencoder"          # registry name in arjax.models.
  for key, value in registry_defaults(AutoencoderFields).items():
    m[key] = value
  m.quantizer = quantizers.default_config(quantizer, **quantizer_fields)
  m.titok = ml_collections.ConfigDict(registry_defaults(TitokFields))
  m.loss = ml_collections.ConfigDict(registry_defaults(LossFields))
  return m


def to_float(images, size: int, channels: int) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 in [-1, 1], checking the shape against the config."""
  if images.dtype != jnp.uint8:
    raise ValueError(f"the autoencoder takes uint8 images, got {images.dtype}")
  if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, channels):
    raise ValueError(f"the autoencoder takes images [B, {size}, {size}, {channels}] "
                     f"(model.image_size={size}, model.channels={channels}), got shape "
                     f"{tuple(images.shape)}")
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x) -> jax.Array:
  """float in [-1, 1] -> uint8 (clipped, rounded)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def frozen_autoencoder(tokenizer):
  """The autoencoder module behind a generator's tokenizer: the module itself, a trained run's
  (bound to its frozen variables), or a 'cached' tokenizer's decoder run; None when there is
  none. What FlexVAR and HART decode sampled latents with and Hi-MAR encodes pivots with."""
  seen = tokenizer
  for _ in range(4):
    if seen is None:
      break
    if hasattr(seen, "latents") and hasattr(seen, "image_size"):
      return seen
    if hasattr(seen, "fm") and hasattr(seen, "variables"):
      return seen.fm.bind(seen.variables)
    seen = getattr(seen, "decoder", None)
  return None


@ENCODERS.register("conv")
def _conv_pair(m, titok, channels: int, z_in: int, z_out: int, rngs: nnx.Rngs):
  cfg = ConvConfig.from_config(m)
  check_image_size(m.image_size, m.image_size, cfg.downsample, "model.ch_mult encoder")
  side = m.image_size // cfg.downsample
  return (ConvEncoder(cfg, channels, z_in, rngs=rngs), ConvDecoder(cfg, channels, z_out, rngs=rngs),
          (side, side))


@ENCODERS.register("titok")
def _titok_pair(m, t, channels: int, z_in: int, z_out: int, rngs: nnx.Rngs):
  from arjax.tokenizers.titok import TokenDecoder, TokenEncoder
  kw = dict(num_tokens=t.num_tokens, patch_size=t.patch_size, width=t.width, depth=t.depth,
            num_heads=t.num_heads, rngs=rngs)
  return (TokenEncoder(m.image_size, channels, z_in, **kw),
          TokenDecoder(m.image_size, channels, z_out, **kw), (1, t.num_tokens))


class Autoencoder(nnx.Module):
  """A tokenizer autoencoder; see the module docstring."""

  evaluation = "tokenizer"

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    node = config.model
    m = read_fields(AutoencoderFields, node, "model 'autoencoder' (config.model)")
    qc = node.quantizer
    if qc.get("dead_code_threshold", 0.0) > 0 and qc.get("ema_decay", 0.0) == 0:
      # The restart would write rows of an nnx.Param that the optimizer owns: the trainer takes
      # parameters from the optimizer only, so the restarted rows would be dropped.
      raise ValueError(f"model.quantizer.dead_code_threshold={qc.dead_code_threshold} needs "
                       "model.quantizer.ema_decay > 0: restarts write codebook rows, which only "
                       "an EMA codebook (model state) carries between steps")
    lo = read_fields(LossFields, node.get("loss"), "config.model.loss")
    titok = read_fields(TitokFields, node.get("titok"), "config.model.titok")
    if lo.rec not in ("l1", "l2"):
      raise ValueError(f"model.loss.rec={lo.rec!r}; expected 'l1' or 'l2'")
    self.image_size, self.channels = m.image_size, m.channels
    self.quantizer = quantizers.build_quantizer(qc, in_channels=m.z_channels, rngs=rngs)
    q = self.quantizer
    if m.quant_conv:
      # LDM / VAR: convs between encoder and quantizer. A KL quantizer reads 2x the channels
      # it gives back (mean and log-variance), so the encoder doubles its latents ("double_z").
      z_enc = m.z_channels * q.in_channels // q.out_channels
      self.quant_conv = Conv(z_enc, q.in_channels, m.quant_conv, rngs=rngs)
      self.post_quant_conv = Conv(q.out_channels, m.z_channels, m.quant_conv, rngs=rngs)
      z_dec = m.z_channels
    else:
      z_enc, z_dec = q.in_channels, q.out_channels
      self.quant_conv = self.post_quant_conv = None
    self.encoder, self.decoder, self.latent_grid = ENCODERS.get(m.encoder, field="model.encoder")(
        m, titok, m.channels, z_enc, z_dec, rngs)
    self.rec = lo.rec
    self.rec_weight = lo.rec_weight
    self.perceptual_weight = lo.perceptual_weight
    self.perceptual_path = losses.perceptual_setting(lo.perceptual_weight, lo.perceptual_weights)
    self.disc_weight, self.disc_start = lo.disc_weight, lo.disc_start
    self.disc_adaptive, self.disc_max_weight = lo.disc_adaptive, lo.disc_max_weight
    self.discriminator = (losses.PatchDiscriminator(m.channels, rngs=rngs,
                                                    channels=lo.disc_channels,
                                                    num_layers=lo.disc_layers,
                                                    num_groups=lo.disc_groups)
                          if lo.disc_weight > 0 else None)
    # The Tokenizer interface.
    self.vocab_size = q.vocab_size
    self.grid: Tuple[int, int] = tuple(self.latent_grid)
    self.tokens_per_image = q.num_tokens(self.grid)

  @property
  def tokenizer(self):
    """Generators and the trainer's input check reach their tokenizer as `model.tokenizer`."""
    return self

  # -- the pipeline -------------------------------------------------------------------------------
  def latents(self, x, *, train: bool = False):
    """float [B, H, W, C] -> what the quantizer reads [B, h, w, Zq]."""
    z = self.encoder(x, train=train)
    return z if self.quant_conv is None else self.quant_conv(z)

  def _post(self, z_q):
    return z_q if self.post_quant_conv is None else self.post_quant_conv(z_q)

  def decode_latents(self, z_q, *, train: bool = False):
    """Quantizer output [B, h, w, Zd] -> float images [B, H, W, C]."""
    return self.decoder(self._post(z_q), train=train)

  def encode(self, images) -> jax.Array:
    """uint8 [B, H, W, C] -> tokens int32 [B, N] (continuous: float32 [B, N, D])."""
    x = to_float(images, self.image_size, self.channels)
    return self.quantizer.encode(self.latents(x))

  def decode(self, tokens) -> jax.Array:
    """tokens [B, N] (continuous: [B, N, D]) -> uint8 [B, H, W, C]."""
    check_array(tokens, "tokens", "autoencoder decode", shape=(None, self.tokens_per_image, ...),
                kind="int" if self.vocab_size else "float",
                legend=" ([B, N], continuous: [B, N, D])")
    return to_uint8(self.decode_latents(self.quantizer.decode(tokens, self.grid)))

  def reconstruct(self, images) -> Tuple[jax.Array, jax.Array]:
    """uint8 [B, H, W, C] -> (uint8 reconstructions [B, H, W, C], tokens), deterministic."""
    x = to_float(images, self.image_size, self.channels)
    out = self.quantizer(self.latents(x), train=False)
    return to_uint8(self.decode_latents(out.z_q)), out.tokens

  def grid_positions(self) -> np.ndarray:
    return self.quantizer.token_positions(self.grid)

  # -- training ----------------------------------------------------------------------------------
  def _rec_loss(self, x, x_rec):
    """Weighted reconstruction + perceptual loss (VQGAN's nll_loss), scalar."""
    d = x_rec - x
    rec = jnp.mean(jnp.abs(d)) if self.rec == "l1" else jnp.mean(jnp.square(d))
    out = self.rec_weight * rec
    if self.perceptual_path:
      weights = losses.load_lpips_weights(self.perceptual_path)
      out = out + self.perceptual_weight * jnp.mean(losses.lpips(weights, x, x_rec))
    return out

  def _frozen_discriminator(self):
    """The discriminator with stop-gradient parameters (for the generator's GAN term)."""
    graphdef, state = nnx.split(self.discriminator)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))

  def loss_terms(self, batch: Dict[str, jax.Array], *, train: bool, isolate: bool = True
             ) -> Tuple[jax.Array, jax.Array, Dict[str, jax.Array]]:
    """(generator loss, discriminator loss, metrics).

    With `isolate`, the generator's GAN term sees the discriminator through stop-gradients
    and the discriminator sees sg(x_rec), so d(g + d)/d(autoencoder) = dg/d(autoencoder) and
    d(g + d)/d(discriminator) = dd/d(discriminator): one gradient of the sum trains both
    players with their own losses in one optimizer step. Without it the two losses are the
    plain functions (for checking that identity).
    """
    x = to_float(batch["image"], self.image_size, self.channels)
    out = self.quantizer(self.latents(x, train=train), train=train)
    h = self.decoder.features(self._post(out.z_q), train=train)
    x_rec = self.decoder.project(h)
    nll = self._rec_loss(x, x_rec)
    g_loss = nll + out.loss
    mse = jnp.mean(jnp.square(jnp.clip(x_rec, -1, 1) - x).reshape(x.shape[0], -1), -1) / 4.0
    metrics = dict(out.metrics, rec_loss=nll, quant_loss=out.loss,
                   psnr=jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))))
    d_loss = jnp.zeros(())
    if self.discriminator is not None:
      step = batch.get("step")
      on = (jnp.zeros(()) if step is None else
            (jnp.asarray(step) >= self.disc_start).astype(jnp.float32))
      d_for_g = self._frozen_discriminator() if isolate else self.discriminator
      gan = -jnp.mean(d_for_g(x_rec))
      weight = jnp.ones(())
      if self.disc_adaptive:
        # Gradients w.r.t. the last kernel only: features and kernel enter as constants.
        hs = jax.lax.stop_gradient(h)
        kernel = jax.lax.stop_gradient(self.decoder.last_kernel)
        frozen = self._frozen_discriminator()
        g_rec = jax.grad(lambda k: self._rec_loss(x, self.decoder.project(hs, k)))(kernel)
        g_gan = jax.grad(lambda k: -jnp.mean(frozen(self.decoder.project(hs, k))))(kernel)
        weight = losses.adaptive_weight(g_rec, g_gan, self.disc_max_weight)
      g_loss = g_loss + on * self.disc_weight * weight * gan
      fake = jax.lax.stop_gradient(x_rec) if isolate else x_rec
      real_logits, fake_logits = self.discriminator(x), self.discriminator(fake)
      d_loss = on * losses.hinge_d_loss(real_logits, fake_logits)
      metrics.update(gan_loss=gan, disc_loss=d_loss, adaptive_weight=weight,
                     logits_real=jnp.mean(real_logits), logits_fake=jnp.mean(fake_logits))
    return g_loss, d_loss, metrics

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    g_loss, d_loss, metrics = self.loss_terms(batch, train=train)
    total = g_loss + d_loss
    return total, dict(metrics, loss=total, generator_loss=g_loss)


@MODELS.register("autoencoder", fields=AutoencoderFields)
def _build(config, *, rngs):
  return Autoencoder(config, rngs=rngs)
