"""The trainer's text evaluation of the diffusion LMs, end to end (configs/text/*.py:smoke).

Two tiny runs through `train_and_evaluate` (4 steps each): the AR objective, whose validation
bits/char must equal a float64 numpy NLL of the same windows (every scored character, padding
rows and the tail window's already-scored characters excluded), and MDLM, whose figure must be
marked a bound and agree with a 32-draw Monte-Carlo estimate of the model's NELBO on the same
windows (within 4 standard errors of the trainer's one-draw estimate). Both write samples.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax
from arjax.config import load_config
from arjax.data.pipeline import make_iterator
from arjax.tokenizers.char import CHARS
from arjax.train.loop import train_and_evaluate


def _run(tmp_path_factory, spec, name, overrides=()):
  workdir = str(tmp_path_factory.mktemp(name))
  config = load_config(spec, overrides)
  result = train_and_evaluate(config, workdir)
  fm, variables, config = arjax.load(workdir)
  return result, fm, variables, config, workdir


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
  # The whole validation split (6,972 windows of 16): its tail window scores part of itself.
  return _run(tmp_path_factory, "configs/text/dlm.py:objective=ar,smoke", "ar",
              ["eval.num_examples=-1", "eval.batch_size=512"])


@pytest.fixture(scope="module")
def mdlm_run(tmp_path_factory):
  return _run(tmp_path_factory, "configs/text/mdlm.py:smoke", "mdlm")


def _batches(config):
  e = config.eval
  seen = 0
  for batch in make_iterator(config.data, split="test", global_batch_size=e.batch_size, seed=0,
                             shuffle=False, num_epochs=1, drop_remainder=False):
    if 0 <= e.num_examples <= seen:
      return
    yield batch
    seen += len(batch["label"])


def _check_samples(result, config):
  assert os.path.isfile(result["samples"])
  texts = open(result["samples"]).read().rstrip("\n").split("\n\n----------\n\n")
  assert len(texts) == config.eval.samples_per_class
  for t in texts:
    assert len(t) == config.data.seq_len and set(t) <= set(CHARS), repr(t)


def test_ar_bits_per_char_is_the_exact_nll(ar_run):
  result, fm, variables, config, workdir = ar_run
  assert result["bound"] is False
  logits_fn = jax.jit(lambda p, x: fm.bind(p).ar_logits(x))
  total, count = 0.0, 0.0
  for batch in _batches(config):
    x = batch["tokens"]
    logits = np.asarray(logits_fn(variables, jnp.asarray(x)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
                           ) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, x[..., None], -1)[..., 0]
    w = batch["token_mask"] * batch.get("mask", np.ones(len(x)))[:, None]
    total += float((nll * w).sum())
    count += float(w.sum())
  # Every validation character once: the split is the last 10 % of the corpus (111,540).
  assert count == result["test_tokens"] == 111_540
  expected = total / count / math.log(2)
  assert math.isfinite(result["test_bits_per_char"])
  np.testing.assert_allclose(result["test_bits_per_char"], expected, rtol=1e-5)
  _check_samples(result, config)
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f)["test_bits_per_char"] == result["test_bits_per_char"]


def test_mdlm_bits_per_char_is_its_nelbo_bound(mdlm_run):
  result, fm, variables, config, _ = mdlm_run
  assert result["bound"] is True
  bpc = result["test_bits_per_char"]
  assert math.isfinite(bpc)
  x = np.concatenate([b["tokens"][b.get("mask", np.ones(len(b["tokens"]))) > 0]
                      for b in _batches(config)])[:config.eval.num_examples]
  assert x.shape == (config.eval.num_examples, config.data.seq_len)
  terms = jax.jit(lambda p, x, k: fm.bind(p).nelbo_terms(x, k))
  # [draws, windows] NELBO in bits per character, t ~ U[0, 1] (the bound's own range).
  draws = np.stack([np.asarray(terms(variables, jnp.asarray(x), jax.random.key(100 + i)))
                    for i in range(32)]) / (x.shape[1] * math.log(2))
  mean = draws.mean()
  # The trainer's figure is one draw per window: its standard error is that of one draw's
  # mean over the windows.
  se_one = draws.mean(1).std(ddof=1)
  assert se_one > 0
  assert abs(bpc - mean) < 4 * se_one + 1e-6, (bpc, mean, se_one)
  # The bound is not the training-range loss of an untrained model by accident: a 4-step model
  # is near uniform, so the bound is near log2(65) = 6.02 and above it is impossible to tell;
  # require it in the plausible range only.
  assert 4.0 < bpc < 12.0
  _check_samples(result, config)


def test_sdar_conversion_writes_the_ar_parameters_into_a_block_model(ar_run, mdlm_run,
                                                                     tmp_path):
  from arjax.convert.sdar import convert_sdar
  _, _, ar_vars, _, ar_dir = ar_run
  out = convert_sdar(ar_dir, str(tmp_path / "sdar"), "configs/text/bd3lm.py:block=4,smoke")
  fm, variables, config = arjax.load(out)
  assert config.model.objective == "bd3lm" and config.model.block_size == 4
  got = jax.tree_util.tree_leaves_with_path(variables)
  want = dict(jax.tree_util.tree_leaves_with_path(ar_vars))
  assert len(got) == len(want)
  for path, value in got:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want[path]))
  # The block model runs on the converted parameters (its bound, not the AR loss).
  x = jnp.asarray(np.arange(2 * config.data.seq_len).reshape(2, -1) % 65, jnp.int32)
  loss, _ = fm.bind(variables).loss({"tokens": x}, train=False)
  assert math.isfinite(float(loss))
  # Only an AR run converts: the MDLM run is refused naming its objective.
  with pytest.raises(ValueError, match="objective 'mdlm'"):
    convert_sdar(mdlm_run[4], str(tmp_path / "bad"), "configs/text/bd3lm.py:block=4,smoke")
