"""Per-sequence KV-cache positions: rows of one batch that have been fed different numbers of
tokens (speculative decoding rolls rows back by different amounts) give, row by row, the logits
of decoding that row alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.nn.attention import write_cache
from tests.helpers import tiny_config, tiny_model

# Row r has been fed FIRST tokens, then is rolled back to INDEX[r] and fed STEP more tokens.
FIRST, STEP, INDEX = 5, 2, (5, 2, 4)


def test_write_cache_per_row_against_numpy():
  rng = np.random.default_rng(0)
  cache = rng.normal(size=(3, 8, 2, 4)).astype(np.float32)
  new = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  idx = np.array([0, 5, 3])
  want = cache.copy()
  for r in range(3):
    want[r, idx[r]:idx[r] + 2] = new[r]
  got = write_cache(jnp.asarray(cache), jnp.asarray(new), jnp.asarray(idx, jnp.int32))
  np.testing.assert_array_equal(np.asarray(got), want)
  with pytest.raises(ValueError, match=r"cache_index has shape \(2,\)"):
    write_cache(jnp.asarray(cache), jnp.asarray(new), jnp.asarray([0, 1], jnp.int32))


@pytest.mark.parametrize("overrides", [
    {},
    {"model__backbone__scan_layers": True},
    {"model__backbone__attention_impl": "pallas"},  # the Pallas decode kernel, interpreted.
    # RAR's decoder ('ordered_ar'): start slot, per-slot adaLN condition, learned and
    # target-aware position tables all follow the per-row offsets.
    dict(model__name="ordered_ar", model__start_token=True, model__timestep_cond=True,
         model__learned_pos=True, model__target_aware=True, model__final_adaln=True,
         model__backbone__adaln=True, model__backbone__position="none"),
], ids=["loop", "scan", "pallas_decode", "ordered_ar_rar"])
def test_rows_at_different_positions_match_each_row_alone(overrides):
  fm, _ = tiny_model(tiny_config(model__backbone__num_kv_heads=2, **overrides))
  params = fm.initial_params()
  n = fm.bind(params).tokenizer.tokens_per_image
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, 4, size=(3, n)), jnp.int32)
  labels = jnp.asarray([1, 7, 10], jnp.int32)
  index = jnp.asarray(INDEX, jnp.int32)

  @jax.jit
  def batched(p):
    model = fm.bind(p)
    caches = model.init_cache(3)
    _, caches = model.decode_prefix(labels, caches)
    _, caches = model.decode_tokens(tokens[:, :FIRST], 0, caches)
    step = jax.vmap(lambda row, i: jax.lax.dynamic_slice_in_dim(row, i, STEP))(tokens, index)
    dist, _ = model.decode_tokens(step, index, caches)
    return dist.logits

  def alone(p, row, label, i):
    model = fm.bind(p)
    caches = model.init_cache(1)
    _, caches = model.decode_prefix(label[None], caches)
    _, caches = model.decode_tokens(row[None, :i], 0, caches)
    dist, _ = model.decode_tokens(row[None, i:i + STEP], i, caches)
    return dist.logits[0]

  alone = jax.jit(alone, static_argnums=3)
  got = np.asarray(batched(params))
  for r, i in enumerate(INDEX):
    want = np.asarray(alone(params, tokens[r], labels[r], i))
    np.testing.assert_allclose(got[r], want, atol=1e-5, rtol=1e-5, err_msg=f"row {r}")
  # The index is really per row: the rows rolled back (1 and 2) differ from what a shared
  # index (row 0's) would give.
  shared = np.asarray(alone(params, tokens[1], labels[1], INDEX[0]))
  assert np.abs(shared - got[1]).max() > 1e-3
