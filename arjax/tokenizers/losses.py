"""Tokenizer training losses beyond reconstruction: PatchGAN hinge discriminator with VQGAN's
adaptive weight, and the LPIPS-VGG perceptual distance from a user-supplied weight file.

  * Discriminator: PatchGAN (Isola et al. 2017, "Image-to-Image Translation with Conditional
    Adversarial Networks") as VQGAN (Esser et al. 2021) and LlamaGen use it: conv4x4 stride 2,
    LeakyReLU(0.2), `num_layers` - 1 more conv4x4 stride-2 layers doubling the channels (up to
    8x), one stride-1 conv4x4, and a 1-channel stride-1 conv4x4 giving one logit per patch.
    VQGAN normalises with BatchNorm; GroupNorm is used instead (no running statistics, so
    train and eval behave alike; the trainer would carry BatchNorm's as model state).
  * Hinge loss (Lim & Ye 2017): D minimises mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec)))
    (halved, as VQGAN); the generator minimises -mean(D(x_rec)).
  * Adaptive weight (VQGAN eq. 7): lambda = ||grad_W L_rec|| / (||grad_W L_G|| + 1e-4),
    clipped to [0, 1e4] and not differentiated, where W is the decoder's last layer weight.
  * LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
    Metric"), VGG16 variant: inputs in [-1, 1] are shifted and scaled, the five relu*_* maps
    of VGG16 are unit-normalised over channels, their squared differences weighted per channel
    by non-negative 1x1 "lin" layers, averaged over space and summed over layers.

Legend: B batch, H/W image size, C channels, h/w patch-logit grid, F feature channels.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.conv import Conv, GroupNorm

_log = logging.getLogger("arjax.tokenizers")


# -- adversarial -----------------------------------------------------------------------------------
class PatchDiscriminator(nnx.Module):
  """PatchGAN: images float [B, H, W, C] in [-1, 1] -> logits [B, h, w, 1]."""

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, channels: int = 64,
               num_layers: int = 3, num_groups: int = 32):
    if num_layers < 1:
      raise ValueError(f"model.loss.disc_layers={num_layers} must be >= 1")
    init = nnx.initializers.normal(0.02)  # VQGAN's weights_init: N(0, 0.02) for convs.
    pad = ((1, 1), (1, 1))
    self.conv_in = Conv(in_channels, channels, 4, rngs=rngs, stride=2, padding=pad, init=init)
    convs, norms = [], []
    c = channels
    for n in range(1, num_layers + 1):
      c_out = channels * min(2 ** n, 8)
      stride = 2 if n < num_layers else 1
      convs.append(Conv(c, c_out, 4, rngs=rngs, stride=stride, padding=pad, bias=False,
                        init=init))
      norms.append(GroupNorm(c_out, rngs=rngs, num_groups=min(num_groups, c_out)))
      c = c_out
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.conv_out = Conv(c, 1, 4, rngs=rngs, padding=pad, init=init)

  def __call__(self, x):
    h = jax.nn.leaky_relu(self.conv_in(x), 0.2)
    for conv, norm in zip(self.convs, self.norms):
      h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
    return self.conv_out(h)


def hinge_d_loss(real_logits, fake_logits) -> jax.Array:
  """Discriminator hinge loss, halved as VQGAN."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def adaptive_weight(grad_rec, grad_gan, max_weight: float = 1e4) -> jax.Array:
  """VQGAN's lambda = ||grad_rec|| / (||grad_gan|| + 1e-4), clipped, without gradient."""
  w = jnp.linalg.norm(grad_rec.reshape(-1)) / (jnp.linalg.norm(grad_gan.reshape(-1)) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


# -- perceptual ------------------------------------------------------------------------------------
# torchvision vgg16().features: index of each 3x3 conv and its (in, out) channels; a 2x2 max
# pool precedes the convs at indices 5, 10, 17 and 24; LPIPS taps the ReLUs after convs 2, 7,
# 14, 21 and 28 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG_CONVS: Tuple[Tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
    (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
    (26, 512, 512), (28, 512, 512))
VGG_POOL_BEFORE = (5, 10, 17, 24)
VGG_TAPS = (2, 7, 14, 21, 28)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer constants, for inputs in [-1, 1].
LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def lpips_expected_shapes() -> Dict[str, Tuple[int, ...]]:
  """The keys and PyTorch shapes an LPIPS-VGG weight file must hold.

  `features.{i}.weight` [out, in, 3, 3] / `features.{i}.bias` [out] are torchvision's vgg16
  state dict; `lin{k}.model.1.weight` [1, F_k, 1, 1] are the lpips package's vgg.pth. One way
  to write the file (in an environment with torch, torchvision and lpips):

      import lpips, numpy as np, torchvision
      vgg = torchvision.models.vgg16(weights="IMAGENET1K_V1").features.state_dict()
      lin = {k: v for k, v in lpips.LPIPS(net="vgg").state_dict().items() if k.startswith("lin")}
      np.savez(path, **{f"features.{k}": v.numpy() for k, v in vgg.items()},
               **{k: v.numpy() for k, v in lin.items()})
  """
  out = {}
  for i, cin, cout in VGG_CONVS:
    out[f"features.{i}.weight"] = (cout, cin, 3, 3)
    out[f"features.{i}.bias"] = (cout,)
  for k, c in enumerate(LPIPS_CHANNELS):
    out[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
  return out


@functools.lru_cache(maxsize=4)
def load_lpips_weights(path: str, field: str = "model.loss.perceptual_weights"
                       ) -> Dict[str, np.ndarray]:
  """Reads an LPIPS-VGG .npz (layout: `lpips_expected_shapes`) into HWIO conv kernels.

  Returns {'conv{i}': kernel [3, 3, in, out], 'bias{i}': [out], 'lin{k}': [F_k]} (float32).
  """
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"{field}={path!r}: LPIPS-VGG weight file not found; write it as "
                            "described in arjax.tokenizers.losses.lpips_expected_shapes, or set "
                            "model.loss.perceptual_weight=0 to train without the perceptual loss")
  with np.load(path, allow_pickle=False) as z:
    raw = {k: np.asarray(z[k]) for k in z.files}
  expected = lpips_expected_shapes()
  missing = sorted(set(expected) - set(raw))
  if missing:
    raise ValueError(f"{field}={path!r}: missing {len(missing)} LPIPS-VGG array(s), e.g. "
                     f"{missing[:3]}")
  for key, shape in expected.items():
    if tuple(raw[key].shape) != shape:
      raise ValueError(f"{field}={path!r}: {key} has shape {list(raw[key].shape)}; expected "
                       f"{list(shape)}")
  out = {}
  for i, _, _ in VGG_CONVS:
    out[f"conv{i}"] = raw[f"features.{i}.weight"].transpose(2, 3, 1, 0).astype(np.float32)
    out[f"bias{i}"] = raw[f"features.{i}.bias"].astype(np.float32)
  for k in range(len(LPIPS_CHANNELS)):
    out[f"lin{k}"] = raw[f"lin{k}.model.1.weight"].reshape(-1).astype(np.float32)
  return out


def vgg_taps(weights: Dict[str, np.ndarray], x) -> Sequence[jax.Array]:
  """x float [B, H, W, 3] (already scaled) -> the five relu maps [B, h_k, w_k, F_k]."""
  taps = []
  h = x
  for i, _, _ in VGG_CONVS:
    if i in VGG_POOL_BEFORE:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.lax.conv_general_dilated(h, jnp.asarray(weights[f"conv{i}"]), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + weights[f"bias{i}"])
    if i in VGG_TAPS:
      taps.append(h)
  return taps


def lpips(weights: Dict[str, np.ndarray], x, y) -> jax.Array:
  """LPIPS-VGG distance [B] between x and y float [B, H, W, C] in [-1, 1] (C = 1 or 3).

  Grey images are repeated to 3 channels. VGG's four 2x2 pools need H, W >= 16.
  """
  if x.shape[-1] == 1:
    x, y = (jnp.repeat(v, 3, axis=-1) for v in (x, y))
  if x.shape[-1] != 3:
    raise ValueError(f"LPIPS takes 1 or 3 channels, got images {tuple(x.shape)}")
  b = x.shape[0]
  both = jnp.concatenate([x, y], 0).astype(jnp.float32)
  both = (both - LPIPS_SHIFT) / LPIPS_SCALE
  total = 0.0
  for k, f in enumerate(vgg_taps(weights, both)):
    f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)
    d = jnp.square(f[:b] - f[b:])
    total = total + jnp.mean(jnp.sum(d * weights[f"lin{k}"], axis=-1), axis=(1, 2))
  return total


_SAID = set()


def perceptual_setting(weight: float, path: str) -> str:
  """The weight file to use ('' = perceptual loss off), checking the config's two fields.

  weight > 0 without a readable file is an error naming the field; weight 0 turns the loss
  off and says so once per process.
  """
  if weight < 0:
    raise ValueError(f"model.loss.perceptual_weight={weight} must be >= 0")
  if weight == 0:
    if "off" not in _SAID:
      _SAID.add("off")
      _log.info("perceptual loss disabled (model.loss.perceptual_weight=0%s)",
                f"; model.loss.perceptual_weights={path!r} is not read" if path else "")
    return ""
  load_lpips_weights(path)  # Fails at build time, naming the field and path.
  return path
