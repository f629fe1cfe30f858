"""GPU (Triton) flash attention in the Pallas interpreter: outputs and gradients vs float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.kernels import blocks as blk
from arjax.kernels import flash_gpu
from arjax.kernels.blocks import FlashBlocks
from arjax.kernels.masks import MaskSpec
from tests.kernels import cases

# Mixed tile shapes, so forward and backward each see q tile != k tile.
BLOCKS = FlashBlocks(block_q=16, block_k=32, block_q_bwd=32, block_k_bwd=16)


def _flash(q, k, v, spec):
  return flash_gpu.flash_attention(q, k, v, spec, blocks=BLOCKS, interpret=True)


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_matches_float64_reference(name):
  got, _ = cases.check_case(_flash, cases.CASES[name])
  if name == "offset_kv_length_9x37":  # sequence 1 sees no key: zero output and gradients
    for x in got:
      assert not np.any(np.asarray(x)[1])


def test_bfloat16_tolerance():
  case = cases.Case(2, 70, 70, 4, 2, 32, lambda: MaskSpec(kind="causal"))
  cases.check_case(_flash, case, dtype=jnp.bfloat16, atol=3e-2, rtol=3e-2)


def test_causal_tiles_above_the_diagonal_are_skipped():
  plan, ops = blk.prepare_mask(MaskSpec(kind="causal"), 1, 64, 64, 1)
  q_ranges, kv_ranges = blk.tile_ranges(plan, ops, 64, 64, 16, 16)
  lo, flo, fhi, hi = np.asarray(q_ranges[0]).T
  np.testing.assert_array_equal(lo, 0)
  np.testing.assert_array_equal(hi, [1, 2, 3, 4])  # only tiles at or below the diagonal
  np.testing.assert_array_equal(fhi - flo, [0, 1, 2, 3])  # all but the diagonal unmasked
  np.testing.assert_array_equal(np.asarray(kv_ranges[0])[:, 0], [0, 1, 2, 3])


def test_block_causal_skips_later_blocks():
  ids = jnp.asarray([[0] * 16 + [1] * 16 + [2] * 32], jnp.int32)
  spec = MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids)
  plan, ops = blk.prepare_mask(spec, 1, 64, 64, 1)
  q_ranges, _ = blk.tile_ranges(plan, ops, 64, 64, 16, 16)
  np.testing.assert_array_equal(np.asarray(q_ranges[0])[:, 3], [1, 2, 4, 4])


@pytest.mark.parametrize("kind", ["causal", "block_causal", "dense"])
def test_lowers_to_triton(kind):
  """Lowering for CUDA runs the Triton lowering rules (power-of-two tiles, masked loads) on
  this CPU host, at the real tile sizes, without a GPU."""
  b, l, h, hkv, d = 2, 1000, 4, 2, 80  # ragged length, GQA, non-power-of-two head dim
  ids = jnp.zeros((b, l), jnp.int32)
  spec = {"causal": MaskSpec(kind="causal", q_segment_ids=ids, kv_segment_ids=ids),
          "block_causal": MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids),
          "dense": MaskSpec(kind="dense", dense=jnp.ones((1, h, l, l), bool))}[kind]
  q = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, l, hkv, d), jnp.bfloat16)
  loss = lambda q, k, v: flash_gpu.flash_attention(q, k, v, spec).astype(jnp.float32).sum()
  text = jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, k, k).lower(
      lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 3  # fwd, dq, dkv


def test_bad_inputs_name_the_values():
  q = jnp.zeros((1, 8, 2, 16), jnp.float64 if jax.config.jax_enable_x64 else jnp.int32)
  with pytest.raises(ValueError, match="dtype int32|dtype float64"):
    flash_gpu.flash_attention(q, q, q, interpret=True)
  q = jnp.zeros((1, 8, 2, 512))
  with pytest.raises(ValueError, match="head dim 512"):
    flash_gpu.flash_attention(q, q, q, interpret=True)
  with pytest.raises(ValueError, match="dtypes differ"):
    flash_gpu.flash_attention(jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 8, 2, 16), jnp.bfloat16),
                              jnp.zeros((1, 8, 2, 16)), interpret=True)
  with pytest.raises(ValueError, match="power of two"):
    FlashBlocks(block_q=48)
