"""Fréchet distance, Inception Score, precision/recall, streaming statistics, reference .npz
files and tokenizer metrics, each against an independent numpy/scipy implementation."""
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from arjax.evaluate import metrics
from arjax.evaluate import reference_stats
from arjax.evaluate import tokenizer_metrics


def _features(rng, n, d, shift=0.0, scale=1.0):
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  return (rng.standard_normal((n, d)) @ mix) * scale + shift + 3.0


def _fd_reference(x, y):
  """pytorch-fid's formula: np.cov + scipy.linalg.sqrtm of the covariance product."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_matches_sqrtm_formula(method):
  rng = np.random.default_rng(0)
  x = _features(rng, 400, 32)
  y = _features(rng, 300, 32, shift=0.3, scale=1.4)
  want = _fd_reference(x, y)
  got = metrics.frechet_distance_from_features(x, y, method=method)
  assert want > 1.0
  np.testing.assert_allclose(got, want, rtol=1e-9)
  # Identical statistics: zero distance (up to round-off), and symmetric.
  mu, sigma = metrics.feature_statistics(x)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8
  np.testing.assert_allclose(metrics.frechet_distance_from_features(y, x, method=method), want,
                             rtol=1e-9)


def test_frechet_distance_closed_form_diagonal():
  # Diagonal Gaussians: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(5.0 + 1.0 + 1.0 + 0.0, rel=1e-12)


@pytest.mark.parametrize("batch_sizes", [(1, 7, 1000), (64, 128, 3)])
def test_streaming_statistics_independent_of_batch_size(batch_sizes):
  rng = np.random.default_rng(1)
  x = _features(rng, 1000, 24, shift=100.0)  # large mean: where raw sums lose digits
  want_mu, want_sigma = x.mean(0), np.cov(x, rowvar=False)
  results = [metrics.feature_statistics(x, batch_size=b) for b in batch_sizes]
  for mu, sigma in results:
    np.testing.assert_allclose(mu, want_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-9, atol=1e-12)
  # Merging accumulators (e.g. one per host) equals one pass.
  a, b = metrics.FeatureStats().update(x[:333]), metrics.FeatureStats().update(x[333:])
  mu, sigma = a.merge(b).finalize()
  np.testing.assert_allclose(sigma, want_sigma, rtol=1e-9, atol=1e-12)


def _is_reference(probs, splits):
  """The original improved-GAN / ADM-suite loop over probability splits."""
  scores = []
  n = len(probs)
  for i in range(splits):
    part = probs[i * n // splits:(i + 1) * n // splits]
    py = part.mean(0, keepdims=True)
    kl = (part * (np.log(part) - np.log(py))).sum(1).mean()
    scores.append(np.exp(kl))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((1000, 50)) * 3
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  want = _is_reference(probs, 10)
  got = metrics.inception_score(logits, splits=10)
  np.testing.assert_allclose(got, want, rtol=1e-9)
  np.testing.assert_allclose(metrics.inception_score(probs=probs, splits=10), want, rtol=1e-9)
  # Bounds: one-hot predictions spread evenly over C classes give IS = C; uniform gives 1.
  one_hot = np.eye(50)[np.arange(1000) % 50] * 1e3
  assert metrics.inception_score(one_hot, splits=1)[0] == pytest.approx(50, rel=1e-6)
  assert metrics.inception_score(np.zeros((100, 50)), splits=1)[0] == pytest.approx(1.0)


def _pr_brute_force(real, fake, k):
  d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
  d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
  d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
  r_real = np.sort(d_rr, axis=1)[:, k]
  r_fake = np.sort(d_ff, axis=1)[:, k]
  precision = np.mean([(d_fr[i] <= r_real).any() for i in range(len(fake))])
  recall = np.mean([(d_fr[:, j] <= r_fake).any() for j in range(len(real))])
  return precision, recall


def test_precision_recall_matches_brute_force():
  rng = np.random.default_rng(3)
  real = rng.standard_normal((300, 8))
  fake = rng.standard_normal((250, 8)) * 1.5 + 0.5  # wider and shifted: both < 1
  want = _pr_brute_force(real, fake, 3)
  got = metrics.precision_recall(real, fake, k=3, batch_size=64)  # several row blocks
  assert 0.2 < want[0] < 0.95 and 0.2 < want[1] < 1.0
  assert got == pytest.approx(want, abs=1e-12)
  # A set against itself is fully precise and fully covered.
  assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)


def test_mismatched_feature_dims_name_both():
  rng = np.random.default_rng(4)
  mu1, s1 = metrics.feature_statistics(rng.standard_normal((50, 8)))
  mu2, s2 = metrics.feature_statistics(rng.standard_normal((50, 6)))
  with pytest.raises(ValueError, match=r"D=8.*D=6"):
    metrics.frechet_distance(mu1, s1, mu2, s2)
  with pytest.raises(ValueError, match=r"\[8, 8\].*\(6, 6\)"):
    metrics.frechet_distance(mu1, s2, mu2, s2)
  with pytest.raises(ValueError, match=r"real D=8, fake D=6"):
    metrics.precision_recall(rng.standard_normal((20, 8)), rng.standard_normal((20, 6)))


def test_rank_deficient_statistics_rejected():
  x = np.random.default_rng(5).standard_normal((10, 16))
  with pytest.raises(ValueError, match=r"10 samples for feature dimension D=16"):
    metrics.feature_statistics(x)
  mu, sigma = metrics.feature_statistics(x, allow_singular=True)
  assert np.linalg.matrix_rank(sigma) == 9
  with pytest.raises(ValueError, match="NaN or inf"):
    metrics.feature_statistics(np.full((20, 4), np.nan))


def test_reference_stats_roundtrip(tmp_path):
  rng = np.random.default_rng(6)
  x = rng.standard_normal((40, 5))
  mu, sigma = metrics.feature_statistics(x)
  path = str(tmp_path / "ref.npz")
  reference_stats.save_reference_stats(path, mu, sigma, mu_s=mu[:3], sigma_s=sigma[:3, :3],
                                       arr_0=x)
  ref = reference_stats.load_reference_stats(path)
  np.testing.assert_array_equal(ref.mu, mu)
  np.testing.assert_array_equal(ref.sigma_s, sigma[:3, :3])
  assert ref.arr_0_kind == "activations"
  np.testing.assert_array_equal(ref.arr_0(), x)
  # The ADM layout: plain np.savez of mu/sigma (+ uint8 images) reads back.
  adm = str(tmp_path / "adm.npz")
  np.savez(adm, mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
  assert reference_stats.load_reference_stats(adm).arr_0_kind == "images"
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, mu=mu, sigma=sigma[:4])
  with pytest.raises(ValueError, match=r"'sigma' must be \[D, D\] with D=5.*\(4, 5\)"):
    reference_stats.load_reference_stats(bad)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    reference_stats.load_reference_stats(str(tmp_path / "missing.npz"))


def _ssim_loop(a, b, data_range):
  """Wang et al. 2004 directly: weighted window statistics at every full-window position."""
  # The window as skimage builds it: scipy's Gaussian filter (sigma 1.5, truncate 3.5) of an
  # impulse gives the normalised 11x11 kernel.
  impulse = np.zeros((11, 11))
  impulse[5, 5] = 1.0
  w = scipy.ndimage.gaussian_filter(impulse, sigma=1.5, truncate=3.5)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  vals = []
  for c in range(a.shape[-1]):
    for i in range(a.shape[0] - 10):
      for j in range(a.shape[1] - 10):
        x, y = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
        mx, my = (w * x).sum(), (w * y).sum()
        vx, vy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2
        cxy = (w * x * y).sum() - mx * my
        vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                    / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return np.mean(vals)


def test_psnr_and_ssim():
  rng = np.random.default_rng(7)
  a = rng.integers(0, 256, (2, 16, 18, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  mse = ((a.astype(float) - b) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(tokenizer_metrics.psnr(a, b), 10 * np.log10(255 ** 2 / mse))
  # Float inputs in [0, 1] give the same numbers.
  np.testing.assert_allclose(tokenizer_metrics.psnr(a / 255.0, b / 255.0),
                             tokenizer_metrics.psnr(a, b))
  want = [_ssim_loop(a[i].astype(float), b[i].astype(float), 255.0) for i in range(2)]
  np.testing.assert_allclose(tokenizer_metrics.ssim(a, b), want, rtol=1e-10)
  np.testing.assert_allclose(tokenizer_metrics.ssim(a / 255.0, b / 255.0), want, rtol=1e-10)
  assert tokenizer_metrics.ssim(a, a) == pytest.approx([1.0, 1.0])
  with pytest.raises(ValueError, match="uint8"):
    tokenizer_metrics.psnr(a, b / 255.0)


# -- detail measures (VTBench-style), each against a pixel loop or a closed form ---------------

def _sobel_loop(img):
  """Sobel magnitude of one [H, W] float image with replicated borders, by explicit loops."""
  h, w = img.shape
  p = np.pad(img, 1, mode="edge")
  kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float) / 4
  out = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      win = p[i:i + 3, j:j + 3]
      out[i, j] = np.hypot((win * kx).sum(), (win * kx.T).sum())
  return out


def test_gradient_magnitude_matches_sobel_loop_and_unit_step():
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, (2, 9, 11, 2), dtype=np.uint8)
  got = tokenizer_metrics.gradient_magnitude(a)
  for b in range(2):
    for c in range(2):
      np.testing.assert_allclose(got[b, :, :, c], _sobel_loop(a[b, :, :, c] / 255.0), atol=1e-12)
  # A full-range vertical step: magnitude 1 on the two columns beside it, 0 elsewhere.
  step = np.zeros((1, 6, 6, 1), np.uint8)
  step[:, :, 3:] = 255
  g = tokenizer_metrics.gradient_magnitude(step)[0, :, :, 0]
  np.testing.assert_allclose(g[:, 2:4], 1.0)
  np.testing.assert_allclose(np.delete(g, [2, 3], axis=1), 0.0)


def test_edge_f1_counts_pixels():
  step = np.zeros((1, 8, 8, 1), np.uint8)
  step[:, :, 4:] = 255                          # edge pixels: columns 3 and 4 (16 pixels).
  moved = np.zeros_like(step)
  moved[:, :, 5:] = 255                         # columns 4 and 5: 8 shared, 8 missed, 8 extra.
  blank = np.zeros_like(step)
  f1 = tokenizer_metrics.edge_f1(np.concatenate([step, step, step, blank]),
                                 np.concatenate([step, moved, blank, blank]))
  np.testing.assert_allclose(f1, [1.0, 2 * 8 / (2 * 8 + 16), 0.0, 1.0])


def test_high_band_ignores_offsets_and_sees_blur():
  rng = np.random.default_rng(4)
  a = rng.uniform(0.2, 0.8, (3, 16, 16, 1))
  shifted = a + 0.1                             # smooth error only: the high band is unchanged.
  # (Rounding leaves ~1e-17 of high band: above 300 dB, where PSNR itself is 20 dB.)
  assert np.all(tokenizer_metrics.high_frequency_psnr(a, shifted) > 250)
  np.testing.assert_allclose(tokenizer_metrics.psnr(a, shifted), 20.0)
  blurred = scipy.ndimage.gaussian_filter(a, (0, 1.5, 1.5, 0))
  # Against the definition, computed independently: high band = x - G_1 * x (edge-replicated).
  hp = lambda x: x - np.stack([scipy.ndimage.gaussian_filter(x[i, :, :, 0], 1.0, mode="nearest")
                               for i in range(len(x))])[..., None]
  mse = ((hp(a) - hp(blurred)) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(tokenizer_metrics.high_frequency_psnr(a, blurred),
                             10 * np.log10(1.0 / mse), rtol=1e-12)
  ratio = tokenizer_metrics.high_frequency_energy_ratio(a, blurred)
  np.testing.assert_allclose(ratio, (hp(blurred) ** 2).sum() / (hp(a) ** 2).sum(), rtol=1e-12)
  assert ratio < 0.5                            # blur removes most of the high band.
  with pytest.raises(ValueError, match="no high-frequency energy"):
    tokenizer_metrics.high_frequency_energy_ratio(np.zeros_like(a), a)


def test_detail_subset_and_metrics():
  rng = np.random.default_rng(5)
  # Image i has i * 2 + 1 random pixels on a blank field: more pixels, more edges.
  imgs = np.zeros((8, 12, 12, 1), np.uint8)
  for i in range(8):
    imgs[i].flat[rng.choice(144, 2 * i + 1, replace=False)] = 255
  score = [_sobel_loop(im[:, :, 0] / 255.0).mean() for im in imgs]
  assert np.all(np.diff(score) > 0)
  np.testing.assert_array_equal(tokenizer_metrics.detail_subset(imgs), [7, 6])
  np.testing.assert_array_equal(tokenizer_metrics.detail_subset(imgs, 0.5), [7, 6, 5, 4])
  noisy = np.clip(imgs.astype(int) + rng.integers(-30, 31, imgs.shape), 0, 255).astype(np.uint8)
  m = tokenizer_metrics.detail_metrics(imgs, noisy)
  np.testing.assert_allclose(m["detail_psnr"], tokenizer_metrics.psnr(imgs[[7, 6]],
                                                                    noisy[[7, 6]]).mean())
  np.testing.assert_allclose(m["edge_f1"], tokenizer_metrics.edge_f1(imgs, noisy).mean())
  same = tokenizer_metrics.detail_metrics(imgs, imgs)
  assert same["edge_f1"] == 1.0 and same["hf_psnr"] == 100.0 and same["hf_energy_ratio"] == 1.0
  with pytest.raises(ValueError, match="fraction"):
    tokenizer_metrics.detail_subset(imgs, 0.0)
