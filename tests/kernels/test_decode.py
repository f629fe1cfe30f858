"""Split-K decode kernel in the Pallas interpreter vs float64, per-sequence cache lengths."""
import jax
import jax.numpy as jnp
import pytest

from arjax.kernels import decode
from arjax.kernels.blocks import DecodeBlocks
from arjax.kernels.masks import MaskSpec
from tests.kernels import cases


def _decode(blocks):
  return lambda q, k, v, spec: decode.decode_attention(q, k, v, spec, blocks=blocks,
                                                       interpret=True)


def test_kv_cache_per_sequence_lengths():
  """2 new tokens per sequence in a 70-slot cache (not a multiple of the 16-key tile), 4 splits:
  sequence 0 has 12 filled slots (3 of 4 splits are empty), sequence 1 has 61."""
  case = cases.Case(2, 2, 70, 4, 2, 32, lambda: MaskSpec(
      kind="causal", q_offset=jnp.asarray([10, 59], jnp.int32),
      kv_length=jnp.asarray([12, 61], jnp.int32)))
  cases.check_case(_decode(DecodeBlocks(block_k=16, num_splits=4)), case)


def test_sliding_window_mqa_single_query():
  case = cases.Case(2, 1, 37, 4, 1, 16, lambda: MaskSpec(
      kind="sliding_window", window=8, q_offset=jnp.asarray([36, 20], jnp.int32),
      kv_length=jnp.asarray([37, 21], jnp.int32)))
  cases.check_case(_decode(DecodeBlocks(block_k=16, num_splits=2)), case, grads=False)


def test_splits_heuristic_and_errors():
  assert DecodeBlocks(block_k=64).splits(batch=1, kv_heads=8, kv_len=8192) == 33
  assert DecodeBlocks(block_k=64).splits(batch=64, kv_heads=8, kv_len=8192) == 1
  assert DecodeBlocks(block_k=64, num_splits=8).splits(1, 1, 100) == 2  # at most one per tile
  q = jnp.zeros((1, 40, 4, 16))
  k = jnp.zeros((1, 64, 2, 16))
  with pytest.raises(ValueError, match="80 rows per kv head"):
    decode.decode_attention(q, k, k, "bidirectional", interpret=True)
  with pytest.raises(ValueError, match="kind='dense'"):
    decode.decode_attention(q[:, :1], k, k, MaskSpec(kind="dense", dense=jnp.ones((1, 1, 1, 64),
                                                                                  bool)))


def test_lowers_to_triton():
  b, lk, h, hkv, d = 4, 4000, 8, 2, 128
  spec = MaskSpec(kind="causal", q_offset=jnp.arange(b, dtype=jnp.int32) * 900,
                  kv_length=jnp.arange(b, dtype=jnp.int32) * 900 + 1)
  q = jax.ShapeDtypeStruct((b, 1, h, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, lk, hkv, d), jnp.bfloat16)
  text = jax.jit(lambda q, k, v: decode.decode_attention(q, k, v, spec)).trace(q, k, k).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "__gpu$xla.gpu.triton" in text
