"""MAR checkpoints -> arjax: the converted 'mar' model matches MAR's official code (LTH14/mar at
fe470ac) on a golden fixture, tests/convert/fixtures/mar_tiny.npz, written by running that code
once on a tiny configuration with fixed random weights (tests/convert/fixtures/README.md):
the MAE encoder-decoder's z for a fixed mask (one conditional row, one row with MAR's
fake_latent) and for the all-masked first sampling step, and the DiffLoss network's eps /
variance output at t = 0, 1, 10, 100, 500, 999. float32 throughout; tolerance: max |ours -
official| <= 1e-5 x max |official| (relative to the output's scale). A checkpoint of another
size is refused listing every differing tensor.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.convert.mar import mar_params
from tests.convert.fixtures_io import converted_model, read_fixture, state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/convert/fixtures/mar_tiny.npz")
CONFIG = os.path.join(ROOT, "configs/imagenet256/mar.py")
# make_fixture.py's MAR(img_size=64, vae_stride=16, vae_embed_dim=4, encoder 2 x 32 (2 heads),
# decoder 2 x 48 (3 heads), buffer 4, 10 classes, DiffLoss 2 x 32).
TINY = ["tokenizer.grid=4", "tokenizer.latent_dim=4", "model.num_classes=10",
        "model.buffer_size=4", "model.backbone.num_layers=2", "model.backbone.num_heads=2",
        "model.backbone.dim=32", "model.decoder_layers=2", "model.decoder_dim=48",
        "model.decoder_heads=3", "model.head.width=32", "model.head.depth=2",
        "model.head.num_sampling_steps=10", "order.num_steps=4"]
RTOL = 1e-5


def close(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  assert ours.shape == official.shape
  err = np.abs(ours - official).max() / np.abs(official).max()
  assert err <= RTOL, f"max relative error {err:.2e} > {RTOL}"
  return err


@pytest.fixture(scope="module")
def fx():
  return read_fixture(FIXTURE)


@pytest.fixture(scope="module")
def converted(fx):
  return converted_model(state_dict(fx), load_config(f"{CONFIG}:size=B", TINY), mar_params)


def labels_of(fx, model):
  return jnp.asarray(np.where(fx["labels"] < 0, model.null_class, fx["labels"]), jnp.int32)


def test_encoder_decoder_matches_official(fx, converted):
  model = converted["model"]
  # Rows 0-1: the fixture's mask; rows 2-3: every token masked (the first sampling step).
  x = jnp.asarray(np.concatenate([fx["x"], fx["x"]]))
  labels = jnp.concatenate([labels_of(fx, model)] * 2)
  masked = jnp.asarray(np.concatenate([fx["mask"].astype(bool), np.ones_like(fx["mask"], bool)]))
  z = jax.jit(model.condition)(x, labels, masked)
  close(z[:2], fx["z"])
  close(z[2:], fx["z_all_masked"])


def test_diffloss_network_matches_official_at_every_t(fx, converted):
  net = converted["model"].head.net
  out = net(jnp.asarray(fx["head_x"]), jnp.asarray(fx["head_t"]),
            net.embed_cond(jnp.asarray(fx["head_c"])))
  assert np.abs(fx["head_out"]).min(0).max() > 0  # eps and variance channels are non-trivial.
  for i in range(len(fx["head_t"])):  # each timestep on its own: the error grows with t.
    close(out[i], fx["head_out"][i])


def test_other_size_lists_every_differing_tensor(converted):
  config = load_config(f"{CONFIG}:size=B", TINY + ["model.head.depth=1", "model.decoder_dim=64",
                                                   "model.decoder_heads=4"])
  with pytest.raises(ValueError) as e:
    mar_params(converted["sd"], config)
  msg = str(e.value)
  assert "decoder_embed.weight: checkpoint (48, 32), config (64, 32)" in msg
  assert "diffusion_pos_embed_learned: checkpoint (1, 16, 48), config (1, 16, 64)" in msg
  assert "unexpected diffloss.net.res_blocks.1.in_ln.weight (32,)" in msg
  # Every decoder tensor of the wrong width is listed, not only the first.
  assert msg.count("decoder_blocks.") >= 2 * 12


def test_discrete_head_config_is_refused(converted):
  config = load_config(f"{CONFIG}:size=B", TINY)
  config.model.head.name = "flow"
  with pytest.raises(ValueError, match="diffusion head; config has model.head.name='flow'"):
    mar_params(converted["sd"], config)


def test_missing_checkpoint_names_the_file(tmp_path):
  from arjax.convert.mar import read_mar_checkpoint
  with pytest.raises(FileNotFoundError, match="MAR checkpoint .*nope.pth"):
    read_mar_checkpoint(str(tmp_path / "nope.pth"))
