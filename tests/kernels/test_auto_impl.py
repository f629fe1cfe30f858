"""What `impl='auto'` picks per platform (the platform query monkeypatched): cuDNN on GPU and
JAX's splash attention on TPU where the call allows, XLA otherwise and on CPU; arjax's Pallas
kernels never (opt-in until checked on a device). Splash itself, interpreted on the CPU, matches
the jnp reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax.kernels as kernels
from arjax.kernels import splash
from arjax.kernels.masks import MaskSpec
from arjax.kernels.reference import attention_reference


def _qkv(b=2, lq=128, lk=128, h=4, hkv=2, d=16, dtype=jnp.bfloat16):
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(ks[0], (b, lq, h, d), dtype),
          jax.random.normal(ks[1], (b, lk, hkv, d), dtype),
          jax.random.normal(ks[2], (b, lk, hkv, d), dtype))


CAUSAL = MaskSpec(kind="causal")
DECODE = MaskSpec(kind="causal", q_offset=jnp.asarray([100, 7]), kv_length=jnp.asarray([101, 8]))
SEGMENTS = MaskSpec(kind="bidirectional", q_segment_ids=jnp.zeros((2, 128), jnp.int32),
                    kv_segment_ids=jnp.zeros((2, 128), jnp.int32))


@pytest.mark.parametrize("platform,shape_kw,spec,want", [
    ("cpu", {}, CAUSAL, "xla"),
    ("cpu", {"dtype": jnp.float32}, CAUSAL, "xla"),
    ("gpu", {}, CAUSAL, "cudnn"),
    ("gpu", {}, MaskSpec(kind="sliding_window", window=16), "cudnn"),
    ("gpu", {"dtype": jnp.float32}, CAUSAL, "xla"),         # cuDNN takes f16 / bf16 only.
    ("gpu", {"d": 256}, CAUSAL, "xla"),                     # head dim > 128.
    ("gpu", {"lq": 1}, DECODE, "xla"),                      # offset mask: would need dense.
    ("gpu", {}, SEGMENTS, "xla"),
    ("tpu", {}, CAUSAL, "splash"),
    ("tpu", {"dtype": jnp.float32}, SEGMENTS, "splash"),
    ("tpu", {"lq": 100, "lk": 100}, CAUSAL, "xla"),         # not a multiple of 128.
    ("tpu", {"lq": 1}, DECODE, "xla"),
    ("tpu", {}, MaskSpec(kind="prefix", prefix_length=4), "xla"),
])
def test_auto_choice_per_platform(monkeypatch, platform, shape_kw, spec, want):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  q, k, v = _qkv(**shape_kw)
  assert kernels._auto_impl(q, k, v, spec) == want
  assert want != "pallas"


@pytest.mark.parametrize("spec", [CAUSAL, SEGMENTS.replace(
    q_segment_ids=jnp.asarray(np.repeat([[0, 1], [0, 0]], 64, axis=1), jnp.int32),
    kv_segment_ids=jnp.asarray(np.repeat([[0, 1], [0, 0]], 64, axis=1), jnp.int32))],
    ids=["causal", "segments"])
def test_splash_interpreted_matches_reference_with_gqa(spec):
  q, k, v = _qkv(dtype=jnp.float32, d=8)
  got = splash.splash_attention(q, k, v, spec, interpret=True)
  want = attention_reference(q, k, v, spec)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_splash_refuses_what_it_cannot_express():
  q, k, v = _qkv(lq=1)
  with pytest.raises(ValueError, match="'splash' cannot take this call: lengths Lq=1"):
    splash.splash_attention(q, k, v, DECODE, interpret=True)
