"""Model state (non-parameter variables a forward pass updates) carried by the one trainer: a VQ
tokenizer's EMA codebook and dead-code restarts against float64 numpy, rejected steps, exact
checkpoint round trip and resume, mismatch errors, and checkpoints written before model state."""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from arjax import data as data_lib
from arjax.models.autoencoder import to_float
from arjax.tokenizers.quantizers.base import nearest_code
from arjax.train.checkpoint import CheckpointMismatchError, Checkpointer
from arjax.train.loop import Experiment
from arjax.train.state import TrainState
from tests.train.test_tokenizer_training import tiny_tokenizer_config

DECAY, EPS = 0.9, 1e-5
THRESHOLD, USAGE_DECAY = 60.0, 0.5  # with 8*14*14 = 1568 latents over 16 codes (98 on average)
NUM_STEPS = 3


def stateful_config():
  c = tiny_tokenizer_config()
  q = c.model.quantizer
  q.ema_decay, q.ema_eps = DECAY, EPS
  # usage starts at 2T: with decay 1/2 a code hit less than T/2 times per step over two steps
  # falls below T and is restarted at step 2 (hits are integers: usage stays exact in float32).
  q.dead_code_threshold, q.usage_decay = THRESHOLD, USAGE_DECAY
  return c


def _target(exp):
  abstract, shardings = exp.abstract_state()
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


@pytest.fixture(scope="module")
def run():
  """NUM_STEPS steps of the real jitted train step; host copies of every state and batch."""
  config = stateful_config()
  exp = Experiment(config)
  _, shardings = exp.abstract_state()
  step = exp.jit_train_step(shardings)
  it = data_lib.make_iterator(config.data, split="train", global_batch_size=config.train.batch_size,
                              seed=config.seed, shuffle=True, num_epochs=None)
  batches = [next(it) for _ in range(NUM_STEPS + 1)]
  state = exp.init_state()
  states = [jax.device_get(state)]
  dead = []
  for b in batches[:NUM_STEPS]:
    state, m = step(state, exp.to_global(b))   # the input state is donated: keep host copies.
    states.append(jax.device_get(state))
    dead.append(float(m.compute()["dead_codes"]))
  return exp, step, shardings, batches, states, dead


def _assignments(exp, state, images):
  """(h [M, D] float64, idx [M]): the quantizer's latents and codes under `state`."""
  m = exp.fm.bind(state.params, model_state=state.model_state)
  x = to_float(jnp.asarray(images), m.image_size, m.channels)
  h = m.quantizer._project_in(m.latents(x, train=True))
  idx = nearest_code(h, m.quantizer.table())
  return np.asarray(h, np.float64).reshape(-1, h.shape[-1]), np.asarray(idx).reshape(-1)


def _numpy_step(q, h, idx):
  """One EMA update then dead-code bookkeeping, in float64. Returns (count, sum, codebook,
  usage, dead) with the restarted rows of codebook/count/sum left for the caller to check."""
  k = q["ema_count"].shape[0]
  hits = np.bincount(idx, minlength=k).astype(np.float64)
  sums = np.zeros((k, h.shape[1]))
  np.add.at(sums, idx, h)
  count = DECAY * q["ema_count"].astype(np.float64) + (1 - DECAY) * hits
  embed = DECAY * q["ema_sum"].astype(np.float64) + (1 - DECAY) * sums
  n = count.sum()
  codebook = embed / ((count + EPS) / (n + k * EPS) * n)[:, None]
  usage = USAGE_DECAY * q["usage"].astype(np.float64) + (1 - USAGE_DECAY) * hits
  dead = usage < THRESHOLD
  usage = np.where(dead, max(usage.mean(), THRESHOLD), usage)
  return count, embed, codebook, usage, dead


def test_ema_codebook_and_restarts_are_carried_step_to_step(run):
  exp, _, _, batches, states, dead_metric = run
  restarted = 0
  for i in range(NUM_STEPS):
    before, after = states[i].model_state["quantizer"], states[i + 1].model_state["quantizer"]
    h, idx = _assignments(exp, states[i], batches[i]["image"])
    count, embed, codebook, usage, dead = _numpy_step(before, h, idx)
    assert dead.sum() == dead_metric[i], i
    live = ~dead
    np.testing.assert_allclose(after["ema_count"][live], count[live], rtol=1e-5, err_msg=str(i))
    np.testing.assert_allclose(after["ema_sum"][live], embed[live], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(after["codebook"][live], codebook[live], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(after["usage"], usage, rtol=1e-6)
    # A restarted code is one of this batch's latents, with fresh EMA statistics.
    for k in np.flatnonzero(dead):
      # 1e-5: the jitted step and this eager recomputation of the float32 latents (|h| ~ 1)
      # differ by a few ulps (1.35e-6 seen with the grain pipeline's batches).
      assert np.abs(h - after["codebook"][k]).max(axis=1).min() < 1e-5, (i, k)
      assert after["ema_count"][k] == 1.0
      np.testing.assert_array_equal(after["ema_sum"][k], after["codebook"][k])
    restarted += int(dead.sum())
  assert 0 < restarted < NUM_STEPS * 16  # restarts happened, not of every code.
  first, last = states[0].model_state["quantizer"], states[-1].model_state["quantizer"]
  assert np.abs(last["codebook"] - first["codebook"]).max() > 1e-3


def test_optimizer_never_sees_model_state_and_evaluation_reads_it(run):
  exp, _, _, _, states, _ = run
  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  trained = paths(states[-1].params) | paths(states[-1].opt_state)
  assert not [p for p in trained if any(n in p for n in ("codebook", "ema_", "usage"))]
  assert set(states[-1].model_state["quantizer"]) == {"codebook", "ema_count", "ema_sum", "usage"}
  # Evaluation, sampling and the token cache bind `eval_params`: the trained codebook.
  bound = exp.fm.bind(exp.eval_params(states[-1]))
  np.testing.assert_array_equal(np.asarray(bound.quantizer.codebook[...]),
                                states[-1].model_state["quantizer"]["codebook"])


def test_rejected_step_leaves_model_state_unchanged(run):
  exp, step, shardings, batches, states, _ = run
  last = states[-1]
  params = jax.tree.map(np.copy, last.params)
  # A NaN in the decoder only: the quantizer still sees finite latents and would update its
  # state (it did at every step above), but the loss is NaN and the step must be rejected.
  params["decoder"]["conv_out"]["kernel"][...] = np.nan
  bad = jax.device_put(last.replace(params=params), shardings)
  out = jax.device_get(step(bad, exp.to_global(batches[NUM_STEPS]))[0])
  assert int(out.rejected) == 1 and int(out.step) == NUM_STEPS + 1
  jax.tree.map(np.testing.assert_array_equal, out.model_state, last.model_state)
  jax.tree.map(np.testing.assert_array_equal, out.opt_state, last.opt_state)


def test_checkpoint_round_trip_and_resume_are_exact(run, tmp_path):
  exp, step, shardings, batches, states, _ = run
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, jax.device_put(states[2], shardings), {}, {}, force=True)
  restored, _, _ = ckpt.restore(2, _target(exp))
  ckpt.close()
  host = jax.device_get(restored)
  assert jax.tree.structure(host) == jax.tree.structure(states[2])
  jax.tree.map(np.testing.assert_array_equal, host, states[2])
  resumed = jax.device_get(step(restored, exp.to_global(batches[2]))[0])
  jax.tree.map(np.testing.assert_array_equal, resumed, states[3])

  # The same checkpoint under a config whose model state differs: every tensor named.
  other = stateful_config()
  other.model.quantizer.ema_decay = other.model.quantizer.dead_code_threshold = 0.0
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  with pytest.raises(CheckpointMismatchError) as err:
    ckpt.restore(2, _target(Experiment(other, check_data=False)))
  ckpt.close()
  msg = str(err.value)
  assert "quantizer/codebook: missing in checkpoint (model expects [16, 8] float32)" in msg
  for name, shape in (("codebook", "[16, 8]"), ("ema_count", "[16]"), ("ema_sum", "[16, 8]"),
                      ("usage", "[16]")):
    assert (f"model_state/quantizer/{name}: in checkpoint {shape} float32 but not in the "
            "model") in msg


@struct.dataclass
class _TrainStateBeforeModelState:
  step: Any
  params: Any
  opt_state: Any
  ema_params: Any
  rng: Any
  nonfinite: Any
  rejected: Any


def test_checkpoint_written_before_model_state_restores_with_empty_model_state(tmp_path):
  import orbax.checkpoint as ocp
  old = _TrainStateBeforeModelState(
      step=jnp.asarray(7, jnp.int32), params={"w": jnp.arange(3.0)},
      opt_state={"mu": {"w": jnp.ones(3)}}, ema_params={}, rng=jnp.zeros(2, jnp.uint32),
      nonfinite=jnp.zeros((), jnp.int32), rejected=jnp.ones((), jnp.int32))
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.manager.save(7, args=ocp.args.Composite(
      state=ocp.args.StandardSave(old), data=ocp.args.JsonSave({}),
      meta=ocp.args.JsonSave({"param_shapes": {"w": [[3], "float32"]}})), force=True)
  ckpt.wait()
  target = jax.eval_shape(lambda: TrainState(model_state={}, **vars(old)))
  state, _, _ = ckpt.restore(7, target)
  assert isinstance(state, TrainState) and state.model_state == {}
  np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
  assert int(state.step) == 7 and int(state.rejected) == 1
  # A model that has model state cannot start from such a checkpoint.
  target = jax.eval_shape(lambda: TrainState(**dict(vars(old), model_state={"n": jnp.ones(2)})))
  with pytest.raises(CheckpointMismatchError,
                     match=r"model_state/n: missing in checkpoint \(model expects \[2\] float32\)"):
    ckpt.restore(7, target)
  ckpt.close()
