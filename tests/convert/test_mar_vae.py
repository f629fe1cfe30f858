"""MAR's KL-16 VAE -> arjax: the converted tokenizer matches MAR's official models/vae.py
(LTH14/mar at fe470ac, AutoencoderKL) on a golden fixture, tests/convert/fixtures/mar_vae_tiny.npz,
written by running that code once on a tiny configuration (ch 64, ch_mult 1 1 2, 2 blocks per
level, 4 latent channels, 16x16 images; tests/convert/fixtures/README.md).

The fixture holds no weights: they are a pure function of (tensor name, element index), the
integer hash `weight` below, which the fixture script ran with the same code; the test
regenerates them and checks each tensor's sum against the fixture's. Checked: the encoder's
moments (quant_conv output), the posterior mean, the log-variance after LDM's clamp to
[-30, 20] (two channels are pushed past each bound) and the std; MAR's tokens (mean x 0.2325);
the decoder's output for given latents and for the tokens (decode divides by 0.2325). float32
throughout; tolerance: max |ours - official| <= 1e-5 x max |official| (the std elementwise,
1e-5 relative). A checkpoint with a missing, a left-over or a mis-shaped tensor is refused
naming it; the CLI writes the generator with the VAE as its tokenizer run, which arjax.load
restores as the generator's decoder.
"""
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.convert.mar_vae import mar_vae_params, tokenizer_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.models.autoencoder import to_float
from arjax.tokenizers.quantizers.kl import split_moments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/convert/fixtures/mar_vae_tiny.npz")
# The fixture's Encoder / Decoder(ch=64, ch_mult=(1, 1, 2), num_res_blocks=2, z_channels=4),
# encoder attention at the lowest level, 16x16 RGB -> 4x4 latents.
TOKENIZER = ["model.ch=64", "model.ch_mult=[1,1,2]", "model.num_res_blocks=2",
             "model.image_size=16", "model.z_channels=4", "model.quantizer.latent_dim=4"]
EMBED_DIM, SCALE = 4, 0.2325
RTOL = 1e-5
_M64 = (1 << 64) - 1


def det_normal(name: str, n: int) -> np.ndarray:
  """float64 [n], approximately N(0, 1) (Irwin-Hall of 4 uniforms): splitmix64 of (name, index),
  exact integer and IEEE float64 operations only, so it is the same on every machine."""
  base = (zlib.crc32(name.encode()) * 0x9E3779B97F4A7C15) & _M64
  z = np.arange(4 * n, dtype=np.uint64) + np.uint64(base)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  z = z ^ (z >> np.uint64(31))
  u = ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(4, n)
  return (((u[0] + u[1]) + u[2]) + u[3] - 2.0) * np.sqrt(3.0)


def weight(name: str, shape) -> np.ndarray:
  """The fixture's tensor `name`: convs N(0, 1/fan-in), GroupNorm scales 1 + 0.3 N, biases
  0.3 N; quant_conv's bias pushes log-variance channels 0 and 1 to +30 and -40."""
  r = det_normal(name, int(np.prod(shape))).reshape(shape)
  if len(shape) == 4:
    w = r / np.sqrt(shape[1] * shape[2] * shape[3])
  elif "norm" in name and name.endswith("weight"):
    w = 1.0 + 0.3 * r
  else:
    w = 0.3 * r
  if name == "quant_conv.bias":
    w = w.copy()
    w[EMBED_DIM], w[EMBED_DIM + 1] = 30.0, -40.0
  return w.astype(np.float32)


def close(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  assert ours.shape == official.shape
  err = np.abs(ours - official).max() / np.abs(official).max()
  assert err <= RTOL, f"max relative error {err:.2e} > {RTOL}"
  return err


@pytest.fixture(scope="module")
def fx():
  with np.load(FIXTURE) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def sd(fx):
  return {str(n): weight(str(n), tuple(int(x) for x in s[:d]))
          for n, s, d in zip(fx["sd_names"], fx["sd_shapes"], fx["sd_ndim"])}


@pytest.fixture(scope="module")
def converted(sd):
  config = tokenizer_config(TOKENIZER)
  fm = FunctionalModel.abstract(lambda: build_model(config))
  params = jax.tree.map(jnp.asarray, mar_vae_params(sd, config))

  @jax.jit
  def run(params, images, z, tokens):
    ae = fm.bind(params)
    moments = ae.latents(to_float(images, 16, 3))
    return (moments, ae.quantizer.encode(moments), ae.decode_latents(z),
            ae.decode_latents(ae.quantizer.decode(tokens, ae.grid)))

  return dict(config=config, fm=fm, params=params, run=run)


@pytest.fixture(scope="module")
def outputs(fx, converted):
  tokens = (fx["mean"] * np.float32(SCALE)).reshape(2, -1, EMBED_DIM)  # MAR's tokens.
  out = converted["run"](converted["params"], jnp.asarray(fx["images"]), jnp.asarray(fx["z"]),
                         jnp.asarray(tokens))
  return dict(zip(("moments", "tokens", "dec", "rec"), out), official_tokens=tokens)


def test_regenerated_weights_are_the_fixtures(fx, sd):
  sums = np.array([sd[str(n)].astype(np.float64).sum() for n in fx["sd_names"]])
  np.testing.assert_allclose(sums, fx["sd_sums"], rtol=1e-9, atol=1e-9)
  assert len(sd) == 220 and sum(v.size for v in sd.values()) == 3_923_495
  # The official layout: attention after each block of the lowest encoder level, none in the
  # decoder's levels; separate 1x1 q / k / v convs.
  assert "encoder.down.2.attn.1.q.weight" in sd and "encoder.down.1.attn.0.q.weight" not in sd
  assert not any(k.startswith("decoder.up.") and ".attn." in k for k in sd)


def test_the_released_kl16_layout_maps_onto_the_paper_config(fx):
  # The names and shapes of the official AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))
  # (kl16.ckpt's module, built on torch's meta device by the fixture script) convert into
  # configs/tokenizers/mar_kl16.py with nothing missing, left over or of another shape.
  # Zero-stride arrays: no 66M-parameter state dict is held, only the converted copy.
  shapes = {str(n): tuple(int(x) for x in s[:d])
            for n, s, d in zip(fx["kl16_names"], fx["kl16_shapes"], fx["kl16_ndim"])}
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  config = tokenizer_config()
  params = mar_vae_params(sd, config)
  abstract = FunctionalModel.abstract(lambda: build_model(config)).abstract_params
  got = jax.tree.map(np.shape, params)
  assert got == jax.tree.map(lambda a: tuple(a.shape), abstract)
  assert sum(np.prod(s) for s in shapes.values()) == 66_456_019 == sum(
      a.size for a in jax.tree.leaves(params))


def test_encoder_moments_match_official(fx, outputs):
  moments = np.asarray(outputs["moments"])
  close(moments, fx["moments"])
  mean, logvar = (np.asarray(a) for a in split_moments(jnp.asarray(moments)))
  close(mean, fx["mean"])
  # The clamp is exercised on both sides, and agrees.
  assert fx["logvar"].max() == 20.0 and fx["logvar"].min() == -30.0
  close(logvar, fx["logvar"])
  std = np.exp(0.5 * logvar.astype(np.float64))
  np.testing.assert_allclose(std, fx["std"], rtol=RTOL, atol=0)
  close(outputs["tokens"], outputs["official_tokens"])


def test_decoder_matches_official(fx, outputs):
  close(outputs["dec"], fx["dec"])
  # decode(tokens) divides MAR's tokens by 0.2325 (MAR: vae.decode(tokens / 0.2325)).
  close(outputs["rec"], fx["rec"])


def test_bad_checkpoints_are_refused_naming_the_tensor(sd, converted):
  config = converted["config"]
  bad = dict(sd)
  del bad["encoder.mid.attn_1.k.weight"]
  bad["post_quant_conv.weight"] = np.zeros((4, 8, 1, 1), np.float32)
  bad["decoder.up.0.attn.0.q.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as e:
    mar_vae_params(bad, config)
  msg = str(e.value)
  assert "\n" not in msg
  assert "missing encoder.mid.attn_1.k.weight (128, 128, 1, 1)" in msg
  assert "post_quant_conv.weight: checkpoint (4, 8, 1, 1), config (4, 4, 1, 1)" in msg
  assert "unexpected decoder.up.0.attn.0.q.weight (64, 64, 1, 1)" in msg
  assert "(3 in all)" not in msg and msg.count(";") == 2
  # A VAE of another width: every differing tensor is counted.
  other = tokenizer_config(TOKENIZER + ["model.ch=32"])
  with pytest.raises(ValueError, match=r"encoder\.down\.0\.block\.0\.conv1\.weight: checkpoint "
                                       r"\(64, 64, 3, 3\), config \(32, 32, 3, 3\).*\(214 in all\)"):
    mar_vae_params(sd, other)
  # LDM's training loss (LPIPS, discriminator) saved beside the model is not the autoencoder.
  with_loss = dict(sd, **{"loss.discriminator.main.0.weight": np.zeros((8, 3, 4, 4), np.float32)})
  jax.tree.map(np.testing.assert_array_equal, mar_vae_params(with_loss, config),
               jax.tree.map(np.asarray, converted["params"]))


def test_cli_refusals_name_the_problem(tmp_path):
  from arjax.convert.__main__ import main
  from arjax.convert.mar import convert_mar
  assert main(["mar_vae", "--checkpoint", str(tmp_path / "kl16.ckpt"), "--workdir",
               str(tmp_path / "w")]) == 2
  with pytest.raises(FileNotFoundError, match="KL-16 VAE checkpoint .*kl16.ckpt"):
    from arjax.convert.mar_vae import read_vae_checkpoint
    read_vae_checkpoint(str(tmp_path / "kl16.ckpt"))
  with pytest.raises(ValueError, match="mar_vae: --size does not apply"):
    from arjax.convert import CONVERTERS
    import argparse
    CONVERTERS.get("mar_vae")(argparse.Namespace(checkpoint="x", workdir="w", size="B", vae=None,
                                                 config=None, overrides=[], vae_override=[]))
  # A VAE whose latents are not the generator's tokens: refused before reading any file.
  with pytest.raises(ValueError, match=r"the VAE gives 4x4 latents of 4 channels .*"
                                       r"tokenizer\.grid=16, tokenizer\.latent_dim=16"):
    convert_mar("nope.pth", str(tmp_path / "w"), vae="nope.ckpt", vae_overrides=TOKENIZER)


def test_cli_writes_the_generator_with_the_vae_as_its_tokenizer(fx, sd, tmp_path):
  import subprocess
  import sys
  import arjax
  from arjax.loading import load_tokenizer
  from tests.convert.test_mar import CONFIG, FIXTURE as MAR_FIXTURE, TINY
  with np.load(MAR_FIXTURE) as z:
    np.savez(tmp_path / "gen.npz", **{k[3:]: z[k] for k in z.files if k.startswith("sd/")})
  np.savez(tmp_path / "kl16.npz", **sd)
  work = str(tmp_path / "w")
  # A process of its own on one CPU device, as the command runs: under the tests' 8 fake devices
  # Orbax compiles one slice per shard shape when it saves (a minute on this machine).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "arjax.convert", "mar", "--checkpoint", str(tmp_path / "gen.npz"),
       "--vae", str(tmp_path / "kl16.npz"), "--size", "B", "--workdir", work, "--config", CONFIG]
      + ["--vae_override=" + o for o in TOKENIZER] + ["--config." + o for o in TINY],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  fm, variables, config = arjax.load(work)
  assert config.tokenizer.checkpoint == os.path.join(work, "tokenizer")
  tok = load_tokenizer(config.tokenizer.checkpoint)
  assert (tok.vocab_size, tok.grid, tok.latent_dim) == (0, (4, 4), 4)
  # The run holds the converted tensors (whose outputs, and the decoding of MAR's tokens, the
  # tests above check against the official code), and the loaded generator decodes through it.
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, tok.variables),
               mar_vae_params(sd, tokenizer_config(TOKENIZER)))
  assert fm.bind(variables).tokenizer.decoder is tok
