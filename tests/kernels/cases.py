"""Shared cases for the kernel tests: random inputs, mask specs, and a float64 reference check.

Every case is tiny (B <= 2, L <= 80, H <= 4, K in {16, 24, 32}) because the Pallas interpreter
is slow; lengths are deliberately not multiples of the 16 / 32 tiles.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec


class Case(NamedTuple):
  b: int
  lq: int
  lk: int
  h: int
  hkv: int
  d: int
  spec: Callable[[], MaskSpec]  # built lazily: jnp arrays must not be created at import


def _var_blocks(n):  # VAR-style scales 1, 4, 16, 49 (+ a ragged tail): block id per position
  ids = np.concatenate([np.full(s, i) for i, s in enumerate([1, 4, 16, 49])])
  return np.resize(ids, n) if n <= len(ids) else np.concatenate([ids, np.full(n - len(ids), 4)])


def _prefix_segments():
  """Packed prefix-LM: two rows of segments, prefixes of 5 and 20 positions."""
  row0 = [0] * 12 + [1] * 20 + [2] * 5
  row1 = [0] * 30 + [1] * 7
  ids = jnp.asarray([row0, row1], jnp.int32)
  return MaskSpec(kind="prefix", prefix_length=jnp.asarray([5, 20], jnp.int32),
                  q_segment_ids=ids, kv_segment_ids=ids)


def _dense():
  rng = np.random.default_rng(3)
  m = rng.random((2, 4, 20, 37)) < 0.3
  m[0, 1, 5] = False  # one row that sees nothing
  return MaskSpec(kind="dense", dense=jnp.asarray(m))


CASES: Dict[str, Case] = {
    "causal_gqa_37": Case(2, 37, 37, 4, 2, 32, lambda: MaskSpec(kind="causal")),
    "bidirectional_37x70": Case(1, 37, 70, 2, 2, 16, lambda: MaskSpec(kind="bidirectional")),
    "sliding_window_mqa_70": Case(1, 70, 70, 2, 1, 16,
                                  lambda: MaskSpec(kind="sliding_window", window=20)),
    "prefix_segments_37": Case(2, 37, 37, 2, 2, 16, _prefix_segments),
    "block_causal_var_70": Case(1, 70, 70, 4, 2, 16, lambda: MaskSpec(
        kind="block_causal", q_block_ids=jnp.asarray(_var_blocks(70)[None], jnp.int32),
        kv_block_ids=jnp.asarray(_var_blocks(70)[None], jnp.int32))),
    # Queries at per-sequence offsets in a cache; sequence 1 has an empty cache (zero output).
    "offset_kv_length_9x37": Case(2, 9, 37, 2, 1, 16, lambda: MaskSpec(
        kind="causal", q_offset=jnp.asarray([3, 20], jnp.int32),
        kv_length=jnp.asarray([12, 0], jnp.int32))),
    "dense_heads_20x37_k24": Case(2, 20, 37, 4, 2, 24, _dense),
}


def inputs(case: Case, dtype=jnp.float32, seed: int = 0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (case.b, case.lq, case.h, case.d), dtype)
  k = jax.random.normal(ks[1], (case.b, case.lk, case.hkv, case.d), dtype)
  v = jax.random.normal(ks[2], (case.b, case.lk, case.hkv, case.d), dtype)
  do = jax.random.normal(ks[3], q.shape, dtype)
  return q, k, v, do


# Interpreted kernels become large XLA:CPU programs; LLVM's optimisations would double their
# compile time for a run that takes milliseconds.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_jitted(f, *args):
  return jax.jit(f).lower(*args).compile(FAST_COMPILE)(*args)


def out_and_grads(fn, spec, q, k, v, do):
  """(o, dq, dk, dv) of fn(q, k, v, spec) with cotangent do: one compile per case."""
  def f(q, k, v, do):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, spec), q, k, v)
    return (o, *vjp(do))
  return run_jitted(f, q, k, v, do)


def reference64(spec, q, k, v, do, scale=None):
  """Output and gradients (dq, dk, dv) of masked softmax attention in float64 numpy.

  Independent of the jnp reference (only the mask comes from `MaskSpec.materialize`); rows
  that see no key have zero output and zero gradient.
  """
  q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = d ** -0.5 if scale is None else scale
  mask = np.broadcast_to(np.asarray(spec.materialize(b, lq, lk)), (b, h, lq, lk))
  kh = np.repeat(k, g, axis=2)  # [B, Lk, H, K]: query head i uses kv head i // g
  vh = np.repeat(v, g, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, kh) * scale
  s = np.where(mask, s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.where(mask, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
  den = p.sum(-1, keepdims=True)
  p = p / np.where(den == 0, 1, den)
  o = np.einsum("bhqk,bkhd->bqhd", p, vh)
  dp = np.einsum("bqhd,bkhd->bhqk", do, vh)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kh) * scale
  dkh = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  dvh = np.einsum("bhqk,bqhd->bkhd", p, do)
  fold = lambda x: x.reshape(b, lk, hkv, g, d).sum(3)
  return [o, dq, fold(dkh), fold(dvh)]


def assert_matches(got, want, atol, rtol, names=("out", "dq", "dk", "dv")):
  for name, g, w in zip(names, got, want):
    g = np.asarray(g, np.float64)
    assert np.all(np.isfinite(g)), f"{name}: non-finite values"
    np.testing.assert_allclose(g, w, atol=atol, rtol=rtol, err_msg=name)


def check_case(fn, case: Case, dtype=jnp.float32, atol=2e-5, rtol=2e-5, grads: bool = True):
  """fn's output (and gradients unless grads=False) against the float64 reference."""
  spec = case.spec()
  q, k, v, do = inputs(case, dtype)
  if grads:
    got = out_and_grads(fn, spec, q, k, v, do)
  else:
    got = [run_jitted(lambda q, k, v: fn(q, k, v, spec), q, k, v)]
  want = reference64(spec, q, k, v, do)
  assert_matches(got, want[:len(got)], atol, rtol)
  return got, want

