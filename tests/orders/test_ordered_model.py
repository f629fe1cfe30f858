"""The order-driven model ('ordered_ar') on a tiny backbone: causal orders never let a prediction
see a later cell (perturbation through the real model), the order sampler with one token per step
equals the KV-cached sequential sampler (greedy), and inpainting keeps the given tokens exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import SamplingConfig, SequentialSampler
from arjax.sampling.orders import OrderSampler
from tests.helpers import tiny_config, tiny_model

N = 49  # 7 x 7 tokens of the tiny config.


def _model(order, **kw):
  config = tiny_config(model__name="ordered_ar", order__name=order, **kw)
  return tiny_model(config)


@pytest.mark.parametrize("order", ["random", "randar"])
def test_prediction_never_depends_on_later_cells(order):
  fm, config = _model(order)
  params = fm.initial_params()
  model = fm.bind(params)
  tokens = jax.random.randint(jax.random.key(0), (1, N), 0, 4)
  labels = jnp.array([3])
  layout = model.order.train_layout(jax.random.key(1), 1, 0, True)
  perm = np.asarray(layout.perm)[0]
  t = 20                                  # perturb the cell generated 21st.
  changed = tokens.at[0, perm[t]].set((tokens[0, perm[t]] + 1) % 4)
  a, lay = model.layout_logits(tokens, labels, layout)
  b, _ = model.layout_logits(changed, labels, layout)
  tgt = np.asarray(lay.tgt)[0]
  rank = np.empty(N, int)
  rank[perm] = np.arange(N)
  diff = np.abs(np.asarray(a - b)).max(-1)[0]
  for slot, cell in enumerate(tgt):
    if cell < 0:
      continue
    if rank[cell] <= t:
      assert diff[slot] == 0, (order, slot, rank[cell])
  assert diff[[s for s, c in enumerate(tgt) if c >= 0 and rank[c] > t]].max() > 0


def test_order_sampler_with_groups_of_one_equals_sequential_sampler():
  fm, config = _model("raster")
  greedy = SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=1, top_p=1.0)
  labels = jnp.array([0, 5])
  seq = SequentialSampler(fm, greedy).sample_tokens(fm.initial_params(), labels, jax.random.key(0))
  par = OrderSampler(fm, greedy).sample_tokens(fm.initial_params(), labels, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(par), np.asarray(seq))


@pytest.mark.parametrize("order", ["random", "masked"])
def test_inpainting_keeps_given_tokens_exactly(order):
  fm, config = _model(order)  # the masked order brings its own bidirectional mask.
  known = np.zeros((7, 7), bool)
  known[:, :3] = True                      # outpainting: the left three columns are given.
  given = jax.random.randint(jax.random.key(4), (2, N), 0, 4)
  sampler = OrderSampler(fm, SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0))
  out = sampler.sample_tokens(fm.initial_params(), jnp.array([1, 2]), jax.random.key(5), known=known,
                              given=given)
  k = known.reshape(-1)
  np.testing.assert_array_equal(np.asarray(out)[:, k], np.asarray(given)[:, k])
  assert np.asarray(out).min() >= 0 and np.asarray(out).max() < 4
  with pytest.raises(ValueError, match=r"inpainting mask `known` has shape \(6, 7\)"):
    sampler.sample_tokens(fm.initial_params(), jnp.array([1, 2]), jax.random.key(5),
                          known=np.zeros((6, 7), bool), given=given)


def test_a_masked_order_trains_and_samples_through_the_trainer(tmp_path):
  """The trainer is order-agnostic: a masked (MaskGIT) model trains, evaluates test NLL on its
  masked tokens and draws its sample grid with the order sampler (confidence re-masking)."""
  import json
  import os
  from arjax.train import train_and_evaluate
  config = tiny_config(model__name="ordered_ar", order__name="masked")
  results = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["test_bits_per_dim"]) and results["test_bits_per_dim"] > 0
  assert os.path.isfile(results["sample_grid"])
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl") if '"loss"' in l]
  assert max(steps) == config.train.num_steps
