"""PyTorch-compatible resamplers against float64 numpy transcriptions of PyTorch's formulas.

The references below are written per output pixel, straight from PyTorch's
`upsample_bicubic2d` (source index (i + 0.5) * in/out - 0.5, not clamped; taps floor - 1 ...
floor + 2 read with clamped indices; Keys weights with a = -0.75) and `adaptive_avg_pool2d`
(cell i averages rows floor(i * in / out) ... ceil((i + 1) * in / out) - 1), independently of
the separable matrices in arjax.tokenizers.resample.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.tokenizers.resample import area_resize, bicubic_matrix, bicubic_resize


def _keys(x, a=-0.75):
  x = abs(x)
  if x <= 1:
    return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
  if x < 2:
    return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
  return 0.0


def torch_bicubic_ref(img, out_h, out_w, a=-0.75):
  """img float64 [H, W, C] -> [out_h, out_w, C], PyTorch bicubic, align_corners=False."""
  h, w, _ = img.shape
  out = np.zeros((out_h, out_w, img.shape[2]))
  for i in range(out_h):
    sy = (i + 0.5) * h / out_h - 0.5
    y0 = math.floor(sy)
    for j in range(out_w):
      sx = (j + 0.5) * w / out_w - 0.5
      x0 = math.floor(sx)
      acc = 0.0
      for m in range(-1, 3):
        for n in range(-1, 3):
          yy = min(max(y0 + m, 0), h - 1)
          xx = min(max(x0 + n, 0), w - 1)
          acc = acc + _keys(sy - (y0 + m), a) * _keys(sx - (x0 + n), a) * img[yy, xx]
      out[i, j] = acc
  return out


def torch_area_ref(img, out_h, out_w):
  """img float64 [H, W, C] -> [out_h, out_w, C], PyTorch adaptive average pooling."""
  h, w, _ = img.shape
  out = np.zeros((out_h, out_w, img.shape[2]))
  for i in range(out_h):
    y0, y1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
    for j in range(out_w):
      x0, x1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
      out[i, j] = img[y0:y1, x0:x1].mean(axis=(0, 1))
  return out


SIZES = [((4, 4), (6, 6)), ((1, 1), (16, 16)), ((2, 3), (16, 16)), ((13, 13), (16, 16)),
         ((16, 16), (13, 13)), ((16, 16), (5, 7)), ((16, 16), (1, 1)), ((10, 10), (10, 10)),
         ((7, 5), (3, 2))]


@pytest.mark.parametrize("src,dst", SIZES)
def test_bicubic_matches_pytorch_formula(src, dst):
  rng = np.random.RandomState(0)
  img = rng.randn(2, *src, 3)
  got = np.asarray(bicubic_resize(jnp.asarray(img, jnp.float32), dst))
  want = np.stack([torch_bicubic_ref(x, *dst) for x in img])
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("src,dst", SIZES)
def test_area_matches_adaptive_avg_pool(src, dst):
  rng = np.random.RandomState(1)
  img = rng.randn(2, *src, 3)
  got = np.asarray(area_resize(jnp.asarray(img, jnp.float32), dst))
  want = np.stack([torch_area_ref(x, *dst) for x in img])
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_area_is_block_mean_for_integer_factors():
  x = np.random.RandomState(2).randn(1, 16, 16, 2).astype(np.float32)
  want = x.reshape(1, 4, 4, 4, 4, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(area_resize(jnp.asarray(x), 4)), want, atol=1e-6)


def test_bicubic_differs_from_jax_cubic_but_agrees_in_the_interior_at_a_half():
  """jax.image.resize('cubic') is Keys with a = -0.5 and renormalised edges: with a = -0.5 our
  matrices agree with it away from the border, and PyTorch's a = -0.75 does not (the fact
  this module exists for)."""
  x = np.random.RandomState(3).randn(1, 8, 8, 1).astype(np.float32)
  jax_cubic = np.asarray(jax.image.resize(jnp.asarray(x), (1, 16, 16, 1), "cubic"))
  ours_half = np.asarray(bicubic_resize(jnp.asarray(x), 16, a=-0.5))
  # Outputs 3..12 have all four taps inside the 8-pixel input.
  np.testing.assert_allclose(ours_half[:, 3:13, 3:13], jax_cubic[:, 3:13, 3:13], atol=1e-5)
  ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  ours = np.asarray(bicubic_resize(jnp.asarray(ramp), 6))
  theirs = np.asarray(jax.image.resize(jnp.asarray(ramp), (1, 6, 6, 1), "cubic"))
  assert np.abs(ours - theirs).max() > 0.1


def test_bicubic_rows_sum_to_one_and_identity_at_same_size():
  for n_in, n_out in [(3, 7), (16, 5), (9, 9)]:
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(bicubic_matrix(9, 9), np.eye(9), atol=1e-12)
