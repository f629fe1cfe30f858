"""Residual token caches for HART: a hybrid multi-scale tokenizer run (quantizer.hybrid=True,
MNIST, 7x7 latent, scales 1,2,3,5,7, 16 codes of dim 8; untrained, written as a workdir)
encoded by `write_token_cache` (what `python -m arjax.tokenize` calls):

- every record holds 'tokens' [88] and 'residual' [49, 8], and read back through the data
  pipeline they equal the run's `hybrid_split` of the same images (tokens exactly, the residual
  to 1e-6);
- model 'hart' (configs/imagenet256/hart.py:smoke on that layout) takes 2 train steps from the
  cache (batch['residual'] fed by the pipeline): finite losses, parameters moved;
- a cache without 'residual' for a 'hart' model is refused at start, naming the file and the
  missing field.
"""
import os

import jax
import numpy as np
import pytest

from arjax import data as data_lib
from arjax.config import load_config
from arjax.data.sources import write_array_record
from arjax.loading import load_tokenizer
from arjax.recipes.tokenizers import tokenizer_config
from arjax.train.loop import Experiment
from arjax.train.token_cache import write_token_cache

SCALES = [1, 2, 3, 5, 7]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("hart_cache")
  c = tokenizer_config("multiscale", smoke=True)
  c.model.ch, c.model.num_groups, c.model.z_channels = 8, 4, 8  # 28 -> 7 (the recipe)
  c.model.quantizer.codebook_size, c.model.quantizer.code_dim = 16, 8
  c.model.quantizer.scales = SCALES
  c.model.quantizer.hybrid = True
  # An untrained run written as a workdir (arjax.convert's writer, no training steps), with a
  # spread-out codebook (the init's +-1/V rows would all quantize alike).
  from arjax.convert.workdir import write_workdir
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  params = FunctionalModel(build_model(c, seed=0)).initial_params()
  params["quantizer"]["codebook"] = np.random.default_rng(3).standard_normal(
      (16, 8)).astype(np.float32)
  workdir = str(root / "tok")
  write_workdir(c, params, workdir)
  out = str(root / "cache" / "{split}.array_record")
  summary = write_token_cache(workdir, "mnist", out, ["train", "test"], batch_size=8,
                              num_examples=8)
  return workdir, out, summary


def hart_config(tok_workdir, source):
  c = load_config(os.path.join(ROOT, "configs/imagenet256/hart.py:smoke"))
  c.tokenizer.vocab_size, c.tokenizer.grid, c.tokenizer.scales = 16, 7, SCALES
  c.tokenizer.checkpoint = tok_workdir
  c.order.scales = SCALES
  c.model.code_dim = 8
  c.model.diff_width, c.model.diff_depth = 16, 1
  c.data.source, c.data.pp = source, ""
  c.train.batch_size = 8  # the tests run on 8 fake CPU devices
  return c


def test_cache_round_trip_is_hybrid_split(cache):
  workdir, out, summary = cache
  assert summary["tokenizer"]["hybrid"] is True
  cfg = data_lib.default_config()
  cfg.source = f"array_record:{out}"
  read = next(data_lib.make_iterator(cfg, split="test", global_batch_size=8, seed=0,
                                     shuffle=False, num_epochs=1))
  images = next(data_lib.make_iterator(data_lib.default_config(), split="test",
                                       global_batch_size=8, seed=0, shuffle=False, num_epochs=1))
  tok = load_tokenizer(workdir)
  ae = tok.fm.bind(tok.variables)
  from arjax.models.autoencoder import to_float
  tokens, _, residual = jax.jit(lambda x: ae.quantizer.hybrid_split(
      ae.latents(to_float(x, ae.image_size, ae.channels))))(images["image"])
  assert read["tokens"].shape == (8, 88) and read["residual"].shape == (8, 49, 8)
  assert read["residual"].dtype == np.float32
  np.testing.assert_array_equal(read["tokens"], np.asarray(tokens))
  np.testing.assert_allclose(read["residual"], np.asarray(residual).reshape(8, 49, 8),
                             rtol=0, atol=1e-6)
  assert float(np.abs(read["residual"]).max()) > 1e-3  # a real residual, not zeros
  np.testing.assert_array_equal(read["label"], images["label"])


def test_hart_trains_two_steps_from_the_cache(cache):
  workdir, out, _ = cache
  exp = Experiment(hart_config(workdir, f"array_record:{out}"))
  state = exp.init_state()
  before = jax.tree.map(np.asarray, state.params)
  _, shardings = exp.abstract_state()
  step = exp.jit_train_step(shardings)
  it = data_lib.make_iterator(exp.config.data, split="train", global_batch_size=8, seed=0,
                              shuffle=True)
  for _ in range(2):
    batch = next(it)
    assert "residual" in batch
    state, metrics = step(state, exp.to_global(batch))
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert np.isfinite(values["loss"]) and values["diff_loss"] > 0, values
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, before)
  assert moved["residual_head"] and max(jax.tree.leaves(moved["residual_head"])) > 0
  assert max(jax.tree.leaves(moved["blocks"])) > 0


def test_cache_without_residual_names_file_and_field(cache, tmp_path):
  workdir, out, _ = cache
  bare = str(tmp_path / "{split}.array_record")
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    write_array_record(bare.replace("{split}", split),
                       [{"tokens": rng.integers(0, 16, 88).astype(np.int32),
                         "label": np.asarray(i % 10, np.int32)} for i in range(4)])
  path = bare.replace("{split}", "train")
  with pytest.raises(ValueError, match=rf"file '{path}' \(data.source\) has no 'residual' field"):
    Experiment(hart_config(workdir, f"array_record:{bare}"))
