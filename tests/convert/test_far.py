"""FAR checkpoints -> arjax: the converted 'far' model matches FAR's official code (yuhuUSTC/FAR
at 9b49a51) on a golden fixture, tests/convert/fixtures/far_tiny.npz, written by running that
code once on a tiny FAR (16x16 tokens of 16 channels, as the official sampler hard-codes) with
fixed random weights (tests/convert/fixtures/README.md):

- the level-k low-pass input (official processingpregt_latent: area to k x k, bicubic back) at
  k = 1, 2, 3, 5, 8, 10, 15;
- the encoder-decoder's z (no masking, FAR's default) for L_3(x_0) with class 3 and L_10(x_1)
  with the fake latent;
- the DiffLoss network's output with the level index at t = 0, 1, 10, 100, 500, 999 and levels
  0, 1, 3, 7, 10, 15 (the level enters the MLP's condition as the official index_cond_embed);
- a trace of the official sample_tokens_nomask (cfg 3, temperature 1) with DiffLoss.sample
  replaced by fixed draws D_s: each step's level, CFG scale, temperature and the denoising MLP's
  condition Linear(z) + Linear(k) of the first 16 tokens of both CFG halves, against the
  'next_frequency' sampler with the guided head's `sample` replaced the same way (recording
  through jax.debug.callback).

float32 throughout; tolerance: max |ours - official| <= 1e-5 x max |official| (relative to the
output's scale); the schedules' floats to 1e-12.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.convert.far import far_params
from arjax.heads import diffusion
from arjax.sampling import SamplingConfig, build_sampler
from tests.convert.fixtures_io import converted_model, read_fixture, state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/convert/fixtures/far_tiny.npz")
CONFIG = os.path.join(ROOT, "configs/imagenet256/far.py")
# The fixture's FAR(img_size=256, vae_stride=16, vae_embed_dim=16, encoder 2 x 32 (2 heads),
# decoder 1 x 48 (3 heads), buffer 4, DiffLoss 2 x 32, 10 sampling steps); class_emb has
# FAR's 1000 rows, of which the first 10 are taken.
TINY = ["model.num_classes=10", "model.buffer_size=4", "model.backbone.num_layers=2",
        "model.backbone.num_heads=2", "model.backbone.dim=32", "model.decoder_layers=1",
        "model.decoder_dim=48", "model.decoder_heads=3", "model.head.width=32",
        "model.head.depth=2", "model.head.num_sampling_steps=10"]
RTOL = 1e-5
G, C, N = 16, 16, 256


def close(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  assert ours.shape == official.shape, (ours.shape, official.shape)
  err = np.abs(ours - official).max() / np.abs(official).max()
  assert err <= RTOL, f"max relative error {err:.2e} > {RTOL}"
  return err


def draw(s):
  """The fixed 'draw' of sampling step s, [N, C] (the fixture script's formula)."""
  n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
  return np.sin(0.05 * n + 0.7 * c + 1.3 * s).astype(np.float32)


@pytest.fixture(scope="module")
def fx():
  return read_fixture(FIXTURE)


@pytest.fixture(scope="module")
def converted(fx):
  return converted_model(state_dict(fx, np.float32), load_config(f"{CONFIG}:size=B", TINY),
                         far_params)


def test_level_inputs_match_official(fx, converted):
  model = converted["model"]
  x0 = jnp.asarray(fx["x"][:1])
  for i, k in enumerate(fx["lowpass_levels"]):
    close(model.level_input(x0, int(k))[0], fx["lowpass"][i])


def test_encoder_decoder_matches_official(fx, converted):
  model = converted["model"]
  x = jnp.asarray(fx["x"])
  k0, k1 = (int(k) for k in fx["z_levels"])
  inputs = jnp.concatenate([model.level_input(x[:1], k0), model.level_input(x[1:], k1)])
  labels = jnp.asarray(np.where(fx["labels"] < 0, model.null_class, fx["labels"]), jnp.int32)
  z = jax.jit(model.condition)(inputs, labels, jnp.zeros((2, N), bool))
  close(z, fx["z"])


def test_diffloss_network_with_level_matches_official(fx, converted):
  fm = converted["fm"]

  @jax.jit
  def outputs(params, x, t, c, k):
    model = fm.bind(params)
    net = model.head.net
    with_level = net(x[None], t[None], model.level_head(c[None], k[None]).c)[0]
    return with_level, net(x, t, net.embed_cond(c))

  out, plain = outputs(converted["params"], jnp.asarray(fx["head_x"]),
                       jnp.asarray(fx["head_t"], jnp.float32), jnp.asarray(fx["head_c"]),
                       jnp.asarray(fx["head_k"][:, 0]))
  # The level changes the output: the fixture tests where it enters.
  assert np.abs(fx["head_out"] - fx["head_out_no_level"]).max() > 0.1 * np.abs(
      fx["head_out"]).max()
  for i in range(len(fx["head_t"])):  # each (t, k) on its own: the error grows with t.
    close(out[i], fx["head_out"][i])
  close(plain, fx["head_out_no_level"])


def test_sampling_trace_matches_official(fx, converted, monkeypatch):
  trace = dict(temperature=[], cfg=[], c=[])

  def record(s, scale, c, uncond_c):
    trace["cfg"].append((s, np.asarray(scale)))
    trace["c"].append((s, np.concatenate([np.asarray(c), np.asarray(uncond_c)])))

  def recorded_sample(self, key, *, temperature=1.0):
    s = len(trace["temperature"])  # the steps are unrolled: traced in order.
    trace["temperature"].append(float(temperature))
    jax.debug.callback(functools.partial(record, s), self.scale, self.cond.c, self.uncond_c)
    return jnp.asarray(draw(s))[None]

  monkeypatch.setattr(diffusion.GuidedDiffusion, "sample", recorded_sample)
  sampler = build_sampler(converted["fm"], SamplingConfig(cfg_scale=3.0, temperature=1.0),
                          converted["config"])
  model = converted["model"]
  assert list(model.sample_levels) == list(fx["trace_index"])
  x = sampler.sample_tokens(converted["params"], jnp.array([3], jnp.int32), jax.random.key(0))
  jax.effects_barrier()
  steps = len(fx["trace_index"])
  assert [s for s, _ in sorted(trace["c"], key=lambda e: e[0])] == list(range(steps))
  trace["cfg"] = [v for _, v in sorted(trace["cfg"], key=lambda e: e[0])]
  trace["c"] = [v for _, v in sorted(trace["c"], key=lambda e: e[0])]
  np.testing.assert_allclose(trace["temperature"], fx["trace_temperature"], rtol=1e-12)
  for s in range(steps):
    np.testing.assert_allclose(trace["cfg"][s], fx["trace_cfg"][s], rtol=1e-6)
    close(trace["c"][s][:, :16], fx["trace_c"][s])
  # The official returns the last draw channels-first [1, C, G, G]; ours is raster [1, N, C].
  close(x, fx["trace_tokens"].reshape(1, C, N).transpose(0, 2, 1))


def test_other_head_depth_lists_every_differing_tensor(converted):
  config = load_config(f"{CONFIG}:size=B", TINY + ["model.head.depth=1", "model.head.width=64"])
  with pytest.raises(ValueError) as e:
    far_params(converted["sd"], config)
  msg = str(e.value)
  assert msg.startswith("FAR checkpoint does not match the config")
  assert "diffloss.net.index_cond_embed.weight: checkpoint (32, 1), config (64, 1)" in msg
  assert "unexpected diffloss.net.res_blocks.1.in_ln.weight (32,)" in msg


def test_mar_config_and_too_many_classes_are_refused(converted):
  with pytest.raises(ValueError, match="FAR checkpoints convert into model.name='far', got 'mar'"):
    far_params(converted["sd"], load_config(os.path.join(ROOT, "configs/imagenet256/mar.py")))
  config = load_config(f"{CONFIG}:size=B", TINY[1:] + ["model.num_classes=1001"])
  with pytest.raises(ValueError, match="model.num_classes=1001: the FAR checkpoint's class table "
                                       "has 1000 rows"):
    far_params(converted["sd"], config)



def test_cli_converts_the_state_dict(fx, converted, tmp_path, monkeypatch):
  """`python -m arjax.convert far` on the fixture's state dict (as an .npz) hands the config and
  the parameters above to the workdir writer (replaced here: Orbax's write is slow); a head
  depth that is not the checkpoint's exits with status 2."""
  from arjax.convert import workdir as workdir_lib
  from arjax.convert.__main__ import main
  ckpt = str(tmp_path / "far.npz")
  np.savez(ckpt, **converted["sd"])
  written = {}
  monkeypatch.setattr(workdir_lib, "write_workdir",
                      lambda config, params, workdir, source: written.update(
                          config=config, params=params, source=source) or workdir)
  args = ["far", "--checkpoint", ckpt, "--workdir", str(tmp_path / "w"), "--config", CONFIG]
  assert main(args + [f"--config.{o}" for o in TINY]) == 0
  assert written["config"].model.name == "far" and written["source"] == ckpt
  jax.tree.map(np.testing.assert_array_equal, written["params"],
               jax.tree.map(np.asarray, converted["params"]))
  assert main(args + [f"--config.{o}" for o in TINY] + ["--config.model.head.depth=1"]) == 2
