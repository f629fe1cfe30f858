"""Full Mosaic compilation of the TPU kernels for real chips, on this CPU host.

Needs the `libtpu` wheel (not a dependency: `pip install libtpu`); skipped without it. Unlike
the lowering test in test_flash_tpu.py this runs libtpu's Mosaic compiler, which checks tile
layouts, (8, 128) alignment and VMEM use for the chip, at the real 128-wide tiles.
"""
import os

import pytest

pytest.importorskip("libtpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from arjax.kernels import flash_tpu  # noqa: E402
from arjax.kernels.masks import MaskSpec  # noqa: E402


@pytest.mark.parametrize("kind", ["causal", "block_causal"])
def test_compiles_for_tpu_v5e(kind):
  # Another process on this host may hold libtpu's lock file; compiling does not need it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    dev = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices[0]
  except Exception as e:  # noqa: BLE001 - libtpu present but unusable here
    pytest.skip(f"no TPU topology: {e}")
  sh = SingleDeviceSharding(dev)
  b, l, h, hkv, d = 2, 1000, 4, 2, 128
  q = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16, sharding=sh)
  k = jax.ShapeDtypeStruct((b, l, hkv, d), jnp.bfloat16, sharding=sh)
  ids = jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=sh)

  def loss(q, k, v, ids):
    spec = (MaskSpec(kind="causal", q_segment_ids=ids, kv_segment_ids=ids) if kind == "causal"
            else MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids))
    return flash_tpu.flash_attention(q, k, v, spec).astype(jnp.float32).sum()

  jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, k, ids).compile()
