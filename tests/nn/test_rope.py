"""RoPE against an independent float64 numpy rotation (LlamaGen's 2D layout)."""
import numpy as np
import jax.numpy as jnp

from arjax.nn import rope


def numpy_rope_2d(x, rows, cols, base=10000.0, null="zero"):
  """x [L, H, K] float64; rotates pair p of channels (2p, 2p+1) by angle row*f_p (p < K/4) or
  col*f_{p-K/4} (p >= K/4), with f_j = base^(-4j/K)."""
  L, H, K = x.shape
  out = np.empty_like(x)
  for t in range(L):
    for p in range(K // 2):
      if rows[t] < 0:
        c, s = (0.0, 0.0) if null == "zero" else (1.0, 0.0)
      else:
        j = p % (K // 4)
        f = base ** (-4.0 * j / K)
        pos = rows[t] if p < K // 4 else cols[t]
        c, s = np.cos(pos * f), np.sin(pos * f)
      a, b = x[t, :, 2 * p], x[t, :, 2 * p + 1]
      out[t, :, 2 * p] = a * c - b * s
      out[t, :, 2 * p + 1] = b * c + a * s
  return out


def test_rope_2d_matches_numpy_rotation():
  rng = np.random.default_rng(0)
  L, H, K = 7, 2, 16
  x = rng.normal(size=(L, H, K))
  rows = np.array([-1, 0, 0, 1, 3, 2, 5])
  cols = np.array([-1, 0, 4, 1, 0, 6, 5])
  for null in ("zero", "identity"):
    cos, sin = rope.rope_2d(jnp.asarray(rows)[None], jnp.asarray(cols)[None], K, null_rotation=null)
    got = np.asarray(rope.apply_rope(jnp.asarray(x, jnp.float32)[None], cos, sin))[0]
    want = numpy_rope_2d(x, rows, cols, null=null)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # LlamaGen zeroes the class token's query and key; the identity option leaves them intact.
  cos, sin = rope.rope_2d(jnp.asarray(rows)[None], jnp.asarray(cols)[None], K)
  assert np.all(np.asarray(rope.apply_rope(jnp.asarray(x, jnp.float32)[None], cos, sin))[0, 0] == 0)


def test_rope_preserves_norm_and_relative_positions():
  rng = np.random.default_rng(1)
  K = 8
  q = jnp.asarray(rng.normal(size=(1, 1, 1, K)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, K)), jnp.float32)

  def dot(pq, pk):
    cq, sq = rope.rope_1d(jnp.array([[pq]]), K)
    ck, sk = rope.rope_1d(jnp.array([[pk]]), K)
    return float(jnp.sum(rope.apply_rope(q, cq, sq) * rope.apply_rope(k, ck, sk)))

  # q.k depends only on the offset between positions.
  np.testing.assert_allclose(dot(5, 2), dot(13, 10), rtol=1e-4)
  assert abs(dot(5, 2) - dot(5, 4)) > 1e-3
