"""Attention function: mask kinds and GQA against a float64 numpy implementation."""
import numpy as np
import jax.numpy as jnp
import pytest

from arjax import kernels
from arjax.kernels.masks import MaskSpec


def numpy_attention(q, k, v, allowed):
  """q [B,Lq,H,K], k/v [B,Lk,Hkv,K], allowed bool [B,Lq,Lk] -> [B,Lq,H,K] in float64."""
  b, lq, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros(q.shape)
  for bi in range(b):
    for hi in range(h):
      s = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
      s = np.where(allowed[bi], s, -np.inf)
      m = s.max(-1, keepdims=True)
      p = np.where(allowed[bi], np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
      den = p.sum(-1, keepdims=True)
      out[bi, :, hi] = (p / np.where(den == 0, 1, den)) @ v[bi, :, hi // g]
  return out


def allowed_numpy(kind, b, lq, lk, **kw):
  off = np.broadcast_to(np.asarray(kw.get("q_offset", 0)), (b,))
  out = np.zeros((b, lq, lk), bool)
  for bi in range(b):
    for i in range(lq):
      for j in range(lk):
        qp = i + off[bi]
        if kind == "causal":
          ok = j <= qp
        elif kind == "bidirectional":
          ok = True
        elif kind == "sliding_window":
          ok = j <= qp and qp - j < kw["window"]
        elif kind == "prefix":
          ok = j <= qp or j < kw["prefix_length"]
        elif kind == "block_causal":
          ok = kw["kv_block_ids"][bi, j] <= kw["q_block_ids"][bi, i]
        if "kv_length" in kw:
          ok = ok and j < kw["kv_length"][bi]
        if "q_segment_ids" in kw:
          ok = ok and kw["q_segment_ids"][bi, i] == kw["kv_segment_ids"][bi, j]
        out[bi, i, j] = ok
  return out


CASES = [
    ("causal", {}),
    ("bidirectional", {}),
    ("sliding_window", {"window": 3}),
    ("prefix", {"prefix_length": 4}),
    ("causal", {"q_offset": np.array([3, 5]), "kv_length": np.array([9, 11])}),
    ("block_causal", {"q_block_ids": np.array([[0, 1, 1, 2, 2, 2, 3, 3, 3]] * 2),
                      "kv_block_ids": np.array([[0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]] * 2)}),
    ("bidirectional", {"q_segment_ids": np.array([[0] * 4 + [1] * 5, [0] * 9]),
                       "kv_segment_ids": np.array([[0] * 5 + [1] * 6, [0] * 11])}),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_xla_attention_matches_numpy(kind, kw):
  rng = np.random.default_rng(0)
  b, lq, lk, h, hkv, d = 2, 9, 11, 4, 2, 8
  q, k, v = (rng.normal(size=s) for s in [(b, lq, h, d), (b, lk, hkv, d), (b, lk, hkv, d)])
  spec_kw = {name: (jnp.asarray(val) if isinstance(val, np.ndarray) else val)
             for name, val in kw.items()}
  if kind == "causal" and "q_offset" not in kw:
    spec_kw["q_offset"] = lk - lq
    kw = dict(kw, q_offset=lk - lq)
  spec = MaskSpec(kind=kind, **spec_kw)
  got = kernels.attention(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
                          jnp.asarray(v, jnp.float32), spec, impl="xla")
  want = numpy_attention(q, k, v, allowed_numpy(kind, b, lq, lk, **kw))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
  q = jnp.zeros((1, 4, 3, 8))
  k = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match="not a multiple"):
    kernels.attention(q, k, k, "causal", impl="xla")
  with pytest.raises(ValueError, match="q_block_ids"):
    MaskSpec(kind="block_causal")
  with pytest.raises(ValueError, match="q_segment_ids has shape"):
    kernels.attention(jnp.zeros((1, 4, 2, 8)), k, k,
                      MaskSpec(kind="bidirectional", q_segment_ids=jnp.zeros((1, 5), jnp.int32),
                               kv_segment_ids=jnp.zeros((1, 4), jnp.int32)), impl="xla")
  with pytest.raises(KeyError, match="unknown attention implementation"):
    kernels.attention(jnp.zeros((1, 4, 2, 8)), k, k, "causal", impl="nonsense")
