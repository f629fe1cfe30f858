"""`attention_one_query` (the CPU decode-step form of impl='xla') against a float64 numpy
softmax attention: per-row cache positions, grouped heads, bf16 operands, a row with no visible
key, and the dispatch of kernels.attention(impl='xla') to it."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax.kernels as kernels
from arjax.kernels.masks import MaskSpec
from arjax.kernels.reference import attention_one_query


def _numpy_attention(q, k, v, mask):
  """float64: q [B, 1, H, K], k/v [B, Lk, Hkv, K], mask bool [B, Lk] -> [B, 1, H, K]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, _, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros((b, 1, h, d))
  for i in range(b):
    for j in range(h):
      vis = mask[i]
      if not vis.any():
        continue
      s = k[i, :, j // g] @ q[i, 0, j] / np.sqrt(d)
      s = np.where(vis, s, -np.inf)
      p = np.exp(s - s[vis].max())
      out[i, 0, j] = (p / p.sum()) @ v[i, :, j // g]
  return out


@pytest.mark.parametrize("h,hkv,dtype,tol", [(4, 4, jnp.float32, 1e-5), (4, 2, jnp.float32, 1e-5),
                                             (2, 2, jnp.bfloat16, 2e-2)])
def test_matches_float64_with_per_row_positions(h, hkv, dtype, tol):
  b, lk, d = 5, 13, 8
  ks = jax.random.split(jax.random.PRNGKey(1), 3)
  q = jax.random.normal(ks[0], (b, 1, h, d), dtype)
  k = jax.random.normal(ks[1], (b, lk, hkv, d), dtype)
  v = jax.random.normal(ks[2], (b, lk, hkv, d), dtype)
  index = jnp.asarray([0, 3, 12, 7, 1], jnp.int32)  # each row's cache position
  length = index.at[4].set(0) + 1                   # row 4 sees its first key only
  spec = MaskSpec("causal", q_offset=index, kv_length=length)
  mask = np.arange(lk)[None] < np.asarray(length)[:, None]
  out = attention_one_query(q, k, v, spec)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out, np.float64), _numpy_attention(q, k, v, mask),
                             atol=tol, rtol=tol)


def test_row_with_no_visible_key_is_zero():
  q, k, v = (jnp.ones((2, 1, 2, 4)), jnp.ones((2, 6, 2, 4)), jnp.ones((2, 6, 2, 4)))
  spec = MaskSpec("bidirectional", kv_length=jnp.asarray([0, 6], jnp.int32))
  out = np.asarray(attention_one_query(q, k, v, spec))
  np.testing.assert_array_equal(out[0], 0.0)
  np.testing.assert_allclose(out[1], 1.0, rtol=1e-6)


def test_xla_impl_takes_it_for_one_query_multi_head_on_cpu():
  q, k, v = (jnp.ones((1, 1, 2, 4)), jnp.ones((1, 6, 2, 4)), jnp.ones((1, 6, 2, 4)))
  calls = []
  real = kernels.attention_one_query
  with mock.patch.object(kernels, "attention_one_query",
                         lambda *a, **kw: calls.append(1) or real(*a, **kw)):
    kernels.attention(q, k, v, "causal", impl="xla")               # one query: taken
    kernels.attention(jnp.ones((1, 2, 2, 4)), k, v, "causal", impl="xla")  # two: not
    kernels.attention(q, k[:, :, :1], v[:, :, :1], "causal", impl="xla")   # grouped: not
  assert len(calls) == (1 if jax.default_backend() == "cpu" else 0)


def test_more_than_one_query_is_refused():
  with pytest.raises(ValueError, match="2 queries per row; expected 1"):
    attention_one_query(jnp.ones((1, 2, 2, 4)), jnp.ones((1, 6, 2, 4)), jnp.ones((1, 6, 2, 4)),
                        MaskSpec("causal"))
