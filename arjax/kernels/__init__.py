"""Attention: one function, several implementations.

`attention(q, k, v, mask=...)` is the single entry point every model uses. Implementations
register in `IMPLS`:
  'xla'     the jnp reference (always available; on CPU a one-query multi-head decode step
            takes its multiply-reduce form, `xla_attention`);
  'pallas'  arjax's Pallas kernels: `flash_gpu` (Triton) on GPU, or `decode` (split-K) there
            when a few queries meet a long KV cache; `flash_tpu` (Mosaic) on TPU; on CPU the
            Triton kernels run in the Pallas interpreter (slow: for tests only);
  'cudnn'   `jax.nn.dot_product_attention(implementation='cudnn')` (GPU, f16/bf16);
  'splash'  JAX's bundled splash attention (TPU; `arjax.kernels.splash`).
'auto' picks 'cudnn' on GPU and 'splash' on TPU where the call allows it (dtype, head dim, mask
kind, lengths), else 'xla'; on CPU always 'xla'. Whenever it falls back on an accelerator it
logs why. arjax's own Pallas kernels are opt-in (impl='pallas') until `benchmarks/attention.py`
has passed its correctness check on the device (docs/benchmarks.md records that; none yet).

Layout (that of `jax.nn.dot_product_attention`): q [B, Lq, H, K], k and v [B, Lk, Hkv, K] with
H a multiple of Hkv. Legend: B batch, L length, H heads, K head dim.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from arjax.kernels.masks import MaskSpec, as_mask_spec
from arjax.kernels.reference import attention_one_query, attention_reference, check_shapes
from arjax.registry import Registry

IMPLS: Registry[Callable] = Registry("attention implementation")


@IMPLS.register("xla")
def xla_attention(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None):
  """The jnp reference; on CPU, one query per row (a decode step) of plain multi-head attention
  takes its multiply-reduce form `attention_one_query` (same result up to rounding), which
  XLA:CPU runs without transposing the cache (2-3x faster at 16-32 rows of the quickstart
  shapes). Grouped-query heads (5-D there, slower on XLA:CPU) and other backends (not measured)
  keep the einsum form."""
  if q.shape[1] == 1 and q.shape[2] == k.shape[2] and jax.default_backend() == "cpu":
    return attention_one_query(q, k, v, spec, scale=scale)
  return attention_reference(q, k, v, spec, scale=scale)


_log = logging.getLogger(__name__)
_logged: set = set()


def _log_once(level: int, msg: str) -> None:
  """Logs each distinct reason once per process (attention is traced once per layer)."""
  if msg not in _logged:
    _logged.add(msg)
    _log.log(level, msg)


def _use_decode(q, k) -> bool:
  from arjax.kernels import decode
  g = q.shape[2] // k.shape[2]
  return q.shape[1] * g <= decode.MAX_DECODE_ROWS and k.shape[1] >= 4 * q.shape[1]


@IMPLS.register("pallas")
def pallas_attention(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None):
  """arjax's Pallas kernel for the current backend (see the module docstring)."""
  platform = jax.default_backend()
  if platform == "tpu":
    from arjax.kernels import flash_tpu
    return flash_tpu.flash_attention(q, k, v, spec, scale=scale)
  from arjax.kernels import decode, flash_gpu
  interpret = platform != "gpu"
  if interpret:
    _log_once(logging.WARNING, f"attention impl 'pallas' on platform {platform!r}: running the "
              "Triton kernels in the Pallas interpreter (correct but slow; use 'xla' or 'auto')")
  if spec.kind != "dense" and _use_decode(q, k):
    return decode.decode_attention(q, k, v, spec, scale=scale, interpret=interpret)
  return flash_gpu.flash_attention(q, k, v, spec, scale=scale, interpret=interpret)


CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)


def cudnn_mask_args(spec: MaskSpec, b: int, lq: int, lk: int) -> Optional[dict]:
  """The MaskSpec as cuDNN's own mask arguments, or None when it needs a dense mask.

  Causal (aligned: q_offset 0, Lq == Lk), sliding-window and kv_length map onto cuDNN's masks.
  """
  aligned = isinstance(spec.q_offset, int) and spec.q_offset == 0 and lq == lk
  simple = spec.q_segment_ids is None and spec.dense is None
  kw = {}
  if spec.kv_length is not None:
    kw["key_value_seq_lengths"] = jnp.broadcast_to(jnp.asarray(spec.kv_length, jnp.int32), (b,))
  if spec.kind == "causal" and aligned and simple:
    kw["is_causal"] = True
  elif spec.kind == "sliding_window" and aligned and simple:
    kw.update(is_causal=True, local_window_size=(spec.window - 1, 0))
  elif spec.kind == "bidirectional" and simple:
    pass
  else:
    return None
  return kw


def cudnn_unsupported_reason(q, k, spec: MaskSpec) -> Optional[str]:
  """None when cuDNN takes this call with its own masks, else why not (one line)."""
  if q.dtype not in [jnp.dtype(d) for d in CUDNN_DTYPES] or k.dtype != q.dtype:
    return f"dtype {q.dtype} (k {k.dtype}); cuDNN takes float16 / bfloat16"
  d = q.shape[-1]
  if d > 128 or d % 8:
    return f"head dim {d} (cuDNN: a multiple of 8, <= 128)"
  if cudnn_mask_args(spec, q.shape[0], q.shape[1], k.shape[1]) is None:
    return (f"mask kind {spec.kind!r} with offset/segments/dense fields needs a dense mask "
            "(e.g. a decode step)")
  return None


@IMPLS.register("cudnn")
def cudnn_attention(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None):
  """`jax.nn.dot_product_attention(implementation='cudnn')` with the MaskSpec mapped onto it.

  Causal (aligned, q_offset 0, Lq == Lk), sliding-window and kv_length map onto cuDNN's own
  masks; every other pattern is passed as a dense boolean mask. Rows that see no key are
  not guaranteed to be zero (cuDNN's convention), unlike the other impls.
  """
  platform = jax.default_backend()
  if platform != "gpu":
    raise ValueError(f"attention impl 'cudnn' needs a GPU; the default backend is {platform!r}")
  if q.dtype not in [jnp.dtype(d) for d in CUDNN_DTYPES] or k.dtype != q.dtype:
    raise ValueError(f"attention impl 'cudnn': dtype {q.dtype} (k {k.dtype}) is not supported; "
                     "use float16 or bfloat16")
  d = q.shape[-1]
  if d > 128 or d % 8:
    raise ValueError(f"attention impl 'cudnn': head dim {d} is not supported (multiple of 8, "
                     "<= 128)")
  b, lq, _, _ = q.shape
  lk = k.shape[1]
  kw = cudnn_mask_args(spec, b, lq, lk)
  if kw is None:
    kw = {"mask": spec.materialize(b, lq, lk)}
  return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn", **kw)


@IMPLS.register("splash")
def splash_attention(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None):
  """JAX's bundled splash attention (TPU; interpreted elsewhere, for tests)."""
  from arjax.kernels import splash
  platform = jax.default_backend()
  if platform != "tpu":
    _log_once(logging.WARNING, f"attention impl 'splash' on platform {platform!r}: running the "
              "TPU kernel in the Pallas interpreter (correct but slow; use 'xla' or 'auto')")
  return splash.splash_attention(q, k, v, spec, scale=scale)


def _auto_impl(q, k, v, spec: Optional[MaskSpec] = None) -> str:
  """The implementation 'auto' takes for this call on the current backend (module docstring)."""
  spec = spec or MaskSpec(kind="causal")
  platform = jax.default_backend()
  if platform == "gpu":
    reason = cudnn_unsupported_reason(q, k, spec)
    choice = "cudnn"
  elif platform == "tpu":
    from arjax.kernels import splash
    reason = splash.unsupported_reason(q, k, v, spec)
    choice = "splash"
  else:
    _log_once(logging.INFO, f"attention impl 'auto' -> 'xla': platform {platform!r} (cuDNN "
              "and splash attention run on GPU and TPU)")
    return "xla"
  if reason is not None:
    _log_once(logging.WARNING, f"attention impl 'auto' -> 'xla' on {platform}: {choice} cannot "
              f"take {reason}")
    return "xla"
  return choice


def attention(q, k, v, mask: Union[str, MaskSpec, None] = "causal", *, impl: str = "auto",
              scale: Optional[float] = None):
  """Multi-head attention with grouped-query heads.

  Args:
    q: [B, Lq, H, K]; k, v: [B, Lk, Hkv, K], H % Hkv == 0.
    mask: a MaskSpec, or 'causal' / 'bidirectional'.
    impl: 'auto' (cuDNN on GPU, splash on TPU where the call allows, else XLA; XLA on CPU),
      or a registered name: 'xla', 'pallas', 'cudnn', 'splash'.
    scale: logits scale, default K ** -0.5.
  Returns: [B, Lq, H, K].
  Raises:
    ValueError: head counts that are not a GQA multiple, mask fields whose shapes disagree with
      the lengths, or a dtype / head dim the chosen impl cannot take (the message names them).
  """
  check_shapes(q, k, v)
  spec = as_mask_spec(mask)
  spec.validate(q.shape[0], q.shape[1], k.shape[1])
  name = _auto_impl(q, k, v, spec) if impl == "auto" else impl
  fn = IMPLS.get(name, field="attention impl")
  return fn(q, k, v, spec, scale=scale)


__all__ = ["attention", "attention_reference", "MaskSpec", "as_mask_spec", "IMPLS"]
