"""The tokenizer autoencoder: one-step GAN training equals separate gradients, VQGAN's adaptive
weight against full-model gradients, LPIPS pieces against numpy, clear errors."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.models import build_model
from arjax.tokenizers import losses
from arjax.recipes.tokenizers import tokenizer_config
from arjax.core.functional import FunctionalModel


def small_config(quantizer="vq", **loss):
  c = tokenizer_config(quantizer, smoke=True)
  c.model.image_size = 16
  c.model.ch, c.model.ch_mult, c.model.num_groups = 8, [1, 2], 4
  c.model.z_channels = 8
  for k, v in loss.items():
    c.model.loss[k] = v
  return c


def _images(n=4, size=16, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, size, size, 1)).astype(np.uint8)


def init(config):
  """(FunctionalModel, params). Eager: on 2 CPU cores compiling these once costs more."""
  fm = FunctionalModel(build_model(config))
  return fm, fm.initial_params()


@pytest.fixture(scope="module")
def gan_model():
  return init(small_config(disc_weight=0.5, disc_start=1, disc_channels=8, disc_layers=2,
                           disc_groups=4))


def _is_disc(path):
  return path[0].key == "discriminator"


def test_one_step_gan_gradients_equal_separate_gradients(gan_model):
  fm, params = gan_model
  batch = {"image": _images(), "step": jnp.asarray(5)}
  key = jax.random.key(0)

  def total(p):
    g, d, _ = fm.bind(p, key).loss_terms(batch, train=True, isolate=True)
    return g + d

  def part(p, which):
    g, d, _ = fm.bind(p, key).loss_terms(batch, train=True, isolate=False)
    return g if which == "g" else d

  # The three gradients in one jitted function: one compile costs about half of running the
  # three backward passes op by op (the stop-gradients act at differentiation, before XLA).
  joint, g_sep, d_sep = jax.jit(lambda p: (jax.grad(total)(p), jax.grad(part)(p, "g"),
                                           jax.grad(part)(p, "d")))(params)
  flat_j = jax.tree_util.tree_flatten_with_path(joint)[0]
  flat_g = jax.tree.leaves(g_sep)
  flat_d = jax.tree.leaves(d_sep)
  n_disc = 0
  for (path, gj), gg, gd in zip(flat_j, flat_g, flat_d):
    want = gd if _is_disc(path) else gg
    n_disc += _is_disc(path)
    np.testing.assert_allclose(gj, want, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert n_disc > 0
  # Without the stop-gradients the sum would mix the players' gradients: the discriminator's
  # loss does reach the decoder through x_rec.
  k = ("decoder", "conv_out", "kernel")
  assert np.abs(d_sep[k[0]][k[1]][k[2]]).max() > 0


def test_adversarial_terms_start_at_disc_start(gan_model):
  fm, params = gan_model
  key = jax.random.key(0)
  for step, on in ((0, False), (1, True)):
    batch = {"image": _images(), "step": jnp.asarray(step)}
    grads = jax.grad(lambda p: fm.bind(p, key).loss(batch, train=True)[0])(params)
    disc = max(float(np.abs(x).max()) for x in jax.tree.leaves(grads["discriminator"]))
    assert (disc > 0) == on, step


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer(gan_model):
  fm, params = gan_model
  batch = {"image": _images(), "step": jnp.asarray(5)}
  key = jax.random.key(0)
  # Reference: differentiate the whole model w.r.t. the decoder's last kernel (the param).
  model = fm.bind(params, key)
  x = model.decoder  # noqa: F841  (the bound module owns the kernel below)

  def terms(kernel):
    p = jax.tree.map(lambda a: a, params)
    p["decoder"]["conv_out"]["kernel"] = kernel
    m = fm.bind(p, key)
    xf = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    out = m.quantizer(m.latents(xf, train=True), train=True)
    x_rec = m.decode_latents(out.z_q, train=True)
    rec = jnp.mean(jnp.abs(x_rec - xf))
    gan = -jnp.mean(m.discriminator(x_rec))
    return rec, gan

  kernel = params["decoder"]["conv_out"]["kernel"]
  g_rec = jax.jacrev(lambda k: terms(k)[0])(kernel)
  g_gan = jax.jacrev(lambda k: terms(k)[1])(kernel)
  want = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)
  _, _, metrics = fm.bind(params, key).loss_terms(batch, train=True)
  np.testing.assert_allclose(float(metrics["adaptive_weight"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(losses.adaptive_weight(jnp.ones(4), jnp.zeros(3))), 1e4)


def test_hinge_loss_closed_form():
  real = np.array([2.0, 0.5, -1.0])
  fake = np.array([-2.0, 0.0, 1.5])
  want = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
  np.testing.assert_allclose(float(losses.hinge_d_loss(real, fake)), want, rtol=1e-6)


def _lpips_file(tmp_path, seed=0):
  rng = np.random.RandomState(seed)
  arrays = {k: (rng.randn(*s) * 0.1).astype(np.float32)
            for k, s in losses.lpips_expected_shapes().items()}
  for k in arrays:
    if k.startswith("lin"):
      arrays[k] = np.abs(arrays[k])
  path = str(tmp_path / "lpips_vgg.npz")
  np.savez(path, **arrays)
  return path, arrays


def test_lpips_first_layer_against_numpy(tmp_path):
  path, raw = _lpips_file(tmp_path)
  w = dict(losses.load_lpips_weights(path))
  # Keep layer 0 only: the distance is then relu1_2's normalised squared difference, weighted.
  for k in range(1, 5):
    w[f"lin{k}"] = np.zeros_like(w[f"lin{k}"])
  rng = np.random.RandomState(1)
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)

  def conv_np(h, kernel_oihw, bias):  # 3x3 SAME cross-correlation, NHWC.
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(h.shape[:3] + (kernel_oihw.shape[0],))
    for dy in range(3):
      for dx in range(3):
        out += hp[:, dy:dy + h.shape[1], dx:dx + h.shape[2]] @ kernel_oihw[:, :, dy, dx].T
    return np.maximum(out + bias, 0)

  def feat(v):
    v = (v.astype(np.float64) - losses.LPIPS_SHIFT) / losses.LPIPS_SCALE
    h = conv_np(v, raw["features.0.weight"], raw["features.0.bias"])
    h = conv_np(h, raw["features.2.weight"], raw["features.2.bias"])
    return h / (np.sqrt((h * h).sum(-1, keepdims=True)) + 1e-10)

  want = ((feat(x) - feat(y)) ** 2 * raw["lin0.model.1.weight"].reshape(-1)).sum(-1).mean((1, 2))
  got = np.asarray(losses.lpips(w, jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(got, want, rtol=2e-4)
  full = losses.load_lpips_weights(path)
  np.testing.assert_allclose(np.asarray(losses.lpips(full, x, x)), 0.0, atol=1e-6)


def test_perceptual_settings_fail_or_disable_clearly(tmp_path, caplog):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match=r"model.loss.perceptual_weights=.*nope.npz"):
    build_model(small_config(perceptual_weight=1.0, perceptual_weights=missing))
  losses._SAID.clear()
  with caplog.at_level(logging.INFO, logger="arjax.tokenizers"):
    assert losses.perceptual_setting(0.0, missing) == ""
  assert "perceptual loss disabled" in caplog.text
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, **{k: np.zeros((1,), np.float32) for k in losses.lpips_expected_shapes()})
  with pytest.raises(ValueError,
                     match=r"features.0.weight has shape \[1\]; expected \[64, 3, 3, 3\]"):
    losses.load_lpips_weights(bad)


def test_bad_shapes_and_settings_fail_naming_values():
  c = small_config()
  c.model.image_size = 17
  with pytest.raises(ValueError, match="image size 17x17 is not divisible by .* factor 2"):
    build_model(c)
  c = small_config()
  c.model.quantizer.dead_code_threshold = 1.0  # restarts need the EMA codebook (model state).
  with pytest.raises(ValueError, match=r"dead_code_threshold=1.0 needs model.quantizer.ema_decay"):
    build_model(c)
  fm, params = init(small_config())
  model = fm.bind(params)
  with pytest.raises(ValueError, match=r"\[B, 16, 16, 1\].*got shape \(2, 28, 28, 1\)"):
    model.encode(np.zeros((2, 28, 28, 1), np.uint8))
