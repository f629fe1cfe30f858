"""TPU (Mosaic) flash attention on the CPU: outputs and gradients vs float64.

Most cases run in Pallas' generic interpreter (`interpret="hlo"`: the kernel body and grid,
with NaN past the ragged array ends), which is several times faster than the TPU simulator;
one case runs under `pltpu.force_tpu_interpret_mode()`, the simulator of VMEM, DMAs and
scalar prefetch. Covered: the element mask, tile skipping, per-row ids and scalars, the
dense fallback, GQA, q_len != kv_len and ragged lengths in both axes.
"""
import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from arjax.kernels import flash_tpu
from arjax.kernels.blocks import TpuBlocks
from arjax.kernels.masks import MaskSpec
from tests.kernels import cases

BLOCKS = TpuBlocks(block_q=16, block_k=32, block_q_bwd=32, block_k_bwd=16)


def _flash(q, k, v, spec):
  return flash_tpu.flash_attention(q, k, v, spec, blocks=BLOCKS, interpret="hlo")


@pytest.mark.parametrize("name", ["bidirectional_37x70", "prefix_segments_37",
                                  "block_causal_var_70", "dense_heads_20x37_k24"])
def test_matches_float64_reference(name):
  cases.check_case(_flash, cases.CASES[name])


def test_tpu_simulator_causal_gqa():
  """The TPU simulator: kernels built inside the context run there even with interpret=False."""
  fn = lambda q, k, v, spec: flash_tpu.flash_attention(q, k, v, spec, blocks=BLOCKS)
  with pltpu.force_tpu_interpret_mode():
    cases.check_case(fn, cases.CASES["causal_gqa_37"])


def test_bfloat16_tolerance():
  case = cases.Case(1, 70, 70, 4, 2, 32, lambda: MaskSpec(kind="causal"))
  cases.check_case(_flash, case, dtype=jnp.bfloat16, atol=3e-2, rtol=3e-2, grads=False)


@pytest.mark.parametrize("kind", ["causal", "block_causal"])
def test_lowers_to_mosaic(kind):
  """Lowering for TPU runs the Mosaic lowering rules on this CPU host at the real tile sizes
  (128), without a TPU."""
  b, l, h, hkv, d = 2, 1000, 4, 2, 128
  ids = jnp.zeros((b, l), jnp.int32)
  spec = {"causal": MaskSpec(kind="causal", q_segment_ids=ids, kv_segment_ids=ids),
          "block_causal": MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids)}[kind]
  q = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, l, hkv, d), jnp.bfloat16)
  loss = lambda q, k, v: flash_tpu.flash_attention(q, k, v, spec).astype(jnp.float32).sum()
  text = jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, k, k).lower(
      lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 3  # fwd, dq, dkv


def test_bad_dtype_names_it():
  q = jnp.zeros((1, 8, 2, 16), jnp.float16)
  with pytest.raises(ValueError, match="dtype float16"):
    flash_tpu.flash_attention(q, q, q, interpret=True)
