"""`python -m arjax.sample` flags of next-scale models, on the tiny random VAR / FlexVAR of
tests/models/test_var.py and test_flexvar.py (the run loading is replaced by the in-memory model:
`arjax.loading.load` / `resolve_step` monkeypatched):

- `--scales` at a list ending above the tokenizer grid (FlexVAR, 6 > grid 4): the images are
  6 x (image side / grid) = 12 pixels wide and equal the tokenizer's decoder applied to the
  final latent rebuilt from the sampled tokens (phi of the last scale's code vectors);
- `--scales` on VAR at another list: one `error: --scales:` line naming VAR's fixed tables;
- `--edit_image PNG --edit_mask box:...` (VAR): every kept cell holds the edited image's token
  (the tokenizer's encoding), per scale by VAR's mask rule (`edit_masks`), and free cells vary;
- bad input: a mask PNG of the wrong size, a list not increasing, one flag without the other:
  one `error:` line naming the flag.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from arjax import loading
from arjax import sample as sample_cli
from arjax.config import load_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling.next_scale import edit_masks
from arjax.tokenizers import build_tokenizer
from tests.models import test_flexvar as tf
from tests.models import test_var as tv


def _tokenizer(overrides):
  tconfig = load_config(os.path.join(tv.ROOT, "configs/tokenizers/var_vqvae.py"), overrides)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  params = tv.random_like(tfm.abstract_params, 3, 0.1)
  params["quantizer"]["codebook"] = jnp.asarray(
      np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32))
  return tv.FrozenTokenizer(tfm, params)


def _run(config, tok):
  fm = FunctionalModel.abstract(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  return fm, tv.random_like(fm.abstract_params, 7, 0.3), config


@pytest.fixture(scope="module")
def runs():
  flex_tok, var_tok = _tokenizer(tf.TOKENIZER), _tokenizer(tv.TOKENIZER)
  return {"flex": (_run(tf.flex_config(), flex_tok), flex_tok),
          "var": (_run(tv.var_config(), var_tok), var_tok)}


def cli(monkeypatch, capsys, run, *argv):
  """Runs `python -m arjax.sample` in process on `run` -> (exit code, stdout, stderr)."""
  fm, params, config = run
  monkeypatch.setattr(loading, "resolve_step", lambda workdir, step=None: 1)
  monkeypatch.setattr(loading, "load", lambda workdir, step=None: (fm, params, config))
  from arjax import cli as arjax_cli
  try:
    code = arjax_cli.run(sample_cli.main, ["--workdir", "unused", *argv])
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_flexvar_scales_above_the_grid_decode_a_larger_latent(runs, monkeypatch, capsys,
                                                              tmp_path):
  run, tok = runs["flex"]
  code, out, err = cli(monkeypatch, capsys, run, "--num", "2", "--top_k", "1", "--cfg_scale",
                       "1", "--scales", "1,2,3,4,6", "--out", str(tmp_path / "s"))
  assert code == 0, err
  got = np.load(json.loads(out.strip().splitlines()[-1])["npz"])
  images, tokens = got["images"], got["tokens"]
  assert images.shape == (2, 12, 12, 3) and tokens.shape == (2, 1 + 4 + 9 + 16 + 36)
  # Reference: the final latent from the tokens in numpy (phi of the last scale's codes), then
  # the tokenizer's decoder on that 6x6 latent.
  ae = tok.fm.bind(tok.variables)
  codebook = np.asarray(tok.variables["quantizer"]["codebook"])
  last = jnp.asarray(codebook[tokens[:, -36:]].reshape(2, 6, 6, 8))
  from arjax.models.autoencoder import to_uint8
  want = np.asarray(jax.jit(lambda x: to_uint8(ae.decode_latents(ae.quantizer.phi(3, x))))(last))
  assert np.abs(images.astype(int) - want.astype(int)).max() <= 1


def test_sampler_sample_images_at_a_flexvar_list_decodes_the_larger_latent(runs):
  """`NextScaleSampler.sample_images(..., scales=)` (what notebooks call) gives what the CLI
  gives: the decoder on the final latent of the list's last side (12 pixels at side 6)."""
  from arjax.models.flexvar import decode_latent
  from arjax.sampling import SamplingConfig, build_sampler
  (fm, params, config), _ = runs["flex"]
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0, top_k=1), config)
  labels, key, scales = jnp.asarray([1, 2]), jax.random.key(0), (1, 2, 3, 4, 6)
  images = np.asarray(sampler.sample_images(params, labels, key, scales=scales))
  _, f_hat = sampler.sample_with_fhat(params, labels, key, scales)
  want = np.asarray(decode_latent(fm.bind(params).tokenizer, f_hat))
  assert images.shape == (2, 12, 12, 3)
  np.testing.assert_array_equal(images, want)


def test_var_refuses_another_list_by_name(runs, monkeypatch, capsys):
  code, _, err = cli(monkeypatch, capsys, runs["var"][0], "--num", "1", "--scales", "1,2,4")
  assert code == 2
  assert err.strip().splitlines() == [
      "error: --scales: sampling scales=[1, 2, 4]: model 'var' can only sample at its training "
      "scales [1, 2, 3, 4] (fixed position table of 30 slots and 4 level embeddings)"]


def test_edit_box_keeps_the_edited_images_tokens(runs, monkeypatch, capsys, tmp_path):
  run, tok = runs["var"]
  img = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
  Image.fromarray(img).save(tmp_path / "img.png")
  code, out, err = cli(monkeypatch, capsys, run, "--num", "3", "--edit_image",
                       str(tmp_path / "img.png"), "--edit_mask", "box:0,4,8,8",
                       "--out", str(tmp_path / "e"))
  assert code == 0, err
  tokens = np.load(json.loads(out.strip().splitlines()[-1])["npz"])["tokens"]
  given = np.asarray(tok.fm.bind(tok.variables).encode(jnp.asarray(img[None])))[0]
  keep_grid = np.ones((4, 4))
  keep_grid[:, 2:] = 0.0                     # pixel columns 4..7 = grid columns 2..3 redrawn
  known = edit_masks(keep_grid, [1, 2, 3, 4])
  assert 0 < known.sum() < known.size
  np.testing.assert_array_equal(tokens[:, known], np.broadcast_to(given[known], (3, known.sum())))
  assert (tokens[:, ~known] != given[~known]).any()


@pytest.mark.parametrize("argv, flag", [
    (["--scales", "1,3,2"], "--scales"),
    (["--scales", "1,a"], "--scales"),
    (["--edit_mask", "box:0,0,4,4"], "--edit_image"),
])
def test_bad_flags_before_loading(argv, flag, capsys):
  with pytest.raises(SystemExit) as e:   # checked before the (missing) run is read
    sample_cli.main(["--workdir", "/nonexistent/run", *argv])
  assert e.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: ")


def test_bad_mask_shape_is_named(runs, monkeypatch, capsys, tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "mask.png")
  code, _, err = cli(monkeypatch, capsys, runs["var"][0], "--num", "1", "--edit_image",
                     str(tmp_path / "img.png"), "--edit_mask", str(tmp_path / "mask.png"))
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --edit_mask: ") and \
      "expected the image size 8x8 or the token grid 4x4" in lines[0]
