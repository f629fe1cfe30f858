"""The one attention API: dispatch, logged fallbacks, and clear errors for bad input."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax.kernels as kernels
from arjax.kernels.masks import MaskSpec
from tests.kernels import cases


def _qkv(b=1, lq=20, lk=20, h=2, hkv=1, d=16, dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(ks[0], (b, lq, h, d), dtype),
          jax.random.normal(ks[1], (b, lk, hkv, d), dtype),
          jax.random.normal(ks[2], (b, lk, hkv, d), dtype))


def test_auto_on_cpu_is_xla_with_a_logged_reason(caplog):
  kernels._logged.clear()
  q, k, v = _qkv()
  with caplog.at_level(logging.INFO, logger="arjax.kernels"):
    out = kernels.attention(q, k, v, "causal")
  assert "'auto' -> 'xla'" in caplog.text and "'cpu'" in caplog.text
  np.testing.assert_allclose(out, kernels.attention(q, k, v, "causal", impl="xla"))


def test_auto_on_an_accelerator_logs_why_it_falls_back(monkeypatch, caplog):
  kernels._logged.clear()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q = jnp.zeros((1, 8, 2, 512), jnp.bfloat16)
  with caplog.at_level(logging.WARNING, logger="arjax.kernels"):
    assert kernels._auto_impl(q, q, q) == "xla"
  assert "head dim 512" in caplog.text


def test_pallas_impl_on_cpu_interprets_and_matches_xla():
  """Prefill (flash kernel) and one decode step (split-K kernel) through the public API."""
  q, k, v = _qkv(lq=20, lk=20)
  want = kernels.attention(q, k, v, "causal", impl="xla")
  got = cases.run_jitted(lambda q, k, v: kernels.attention(q, k, v, "causal", impl="pallas"),
                         q, k, v)
  np.testing.assert_allclose(got, want, atol=2e-6)
  spec = MaskSpec(kind="causal", q_offset=jnp.asarray([17]), kv_length=jnp.asarray([18]))
  q1 = q[:, :1]
  want = kernels.attention(q1, k, v, spec, impl="xla")
  got = cases.run_jitted(lambda q, k, v: kernels.attention(q, k, v, spec, impl="pallas"),
                         q1, k, v)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_bad_inputs_raise_errors_naming_the_values():
  q, k, v = _qkv(h=3, hkv=2)
  with pytest.raises(ValueError, match="3 query heads is not a multiple of 2"):
    kernels.attention(q, k, v, impl="pallas")
  q, k, v = _qkv(b=2)
  with pytest.raises(ValueError, match=r"MaskSpec.kv_length has shape \(3,\)"):
    kernels.attention(q, k, v, MaskSpec(kind="causal", kv_length=jnp.ones(3, jnp.int32)))
  with pytest.raises(ValueError, match=r"q_block_ids has shape \(2, 19\)"):
    ids = jnp.zeros((2, 19), jnp.int32)
    kernels.attention(q, k, v, MaskSpec(kind="block_causal", q_block_ids=ids,
                                        kv_block_ids=ids), impl="pallas")
  with pytest.raises(ValueError, match="'cudnn' needs a GPU; the default backend is 'cpu'"):
    kernels.attention(q, k, v, impl="cudnn")
  qi = jnp.zeros((1, 8, 2, 16), jnp.int32)
  with pytest.raises(ValueError, match="dtype int32 is not supported"):
    kernels.attention(qi, qi, qi, impl="pallas")
  with pytest.raises(KeyError, match="unknown attention implementation 'flash'"):
    kernels.attention(q, k, v, impl="flash")
