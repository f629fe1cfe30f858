"""Attention kernels: TFLOP/s, ratios to XLA and cuDNN, and compiled peak memory.

  python benchmarks/attention.py            # GPU/TPU: seq 512..8192, head dim 64/128, bf16
  python benchmarks/attention.py --smoke    # CPU: tiny shapes, Pallas in the interpreter

For each (sequence length, head dim, causal or not, fwd or fwd+bwd) it times
  xla     arjax.kernels.attention(impl='xla'), the jnp reference (materialises [B, H, L, L]);
  pallas  arjax's Pallas kernels (Triton on GPU, Mosaic on TPU, interpreted on CPU);
  cudnn   jax.nn.dot_product_attention(implementation='cudnn') (GPU only);
  jax-ops JAX's bundled Pallas attention (GPU: ops.gpu.attention.mha), another baseline only,
and prints one markdown table: TFLOP/s from the analytic matmul FLOP count (halved when
causal), the pallas/xla and pallas/cudnn time ratios (> 1 means Pallas is faster), and the
compiled temporary memory of xla and pallas next to the size of one f32 [B, H, L, L] tensor,
which the Pallas column must stay far below (no L x L tensor).

Shapes: B * L = 16k tokens (at least 1 sequence), H = 2048 / K heads, as in the
FlashAttention papers. Legend: B batch, L length, H heads, K head dim.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import hardware, time_interleaved


def _flops(b, l, h, d, causal, bwd):
  from arjax.kernels.flash_gpu import flops
  return flops(b, l, l, h, d, causal=causal, backward=bwd)


def _impls(platform: str):
  """name -> attention(q, k, v, causal) for the implementations this platform has."""
  from arjax import kernels
  from arjax.kernels import flash_gpu
  from arjax.kernels.masks import MaskSpec

  def spec(causal):
    return MaskSpec(kind="causal" if causal else "bidirectional")

  impls = {"xla": lambda q, k, v, c: kernels.attention(q, k, v, spec(c), impl="xla")}
  if platform == "cpu":
    blocks = flash_gpu.FlashBlocks(32, 32, 32, 32)
    impls["pallas"] = lambda q, k, v, c: flash_gpu.flash_attention(
        q, k, v, spec(c), blocks=blocks, interpret=True)
  else:
    impls["pallas"] = lambda q, k, v, c: kernels.attention(q, k, v, spec(c), impl="pallas")
  if platform == "gpu":
    impls["cudnn"] = lambda q, k, v, c: jax.nn.dot_product_attention(
        q, k, v, is_causal=c, implementation="cudnn")
    try:  # baseline only: never used by arjax itself
      from jax.experimental.pallas.ops.gpu import attention as jax_ops
      impls["jax-ops"] = lambda q, k, v, c: jax_ops.mha(q, k, v, None, causal=c,
                                                        sm_scale=q.shape[-1] ** -0.5)
    except ImportError:
      pass
  return impls


def _make(fn, causal: bool, bwd: bool):
  if not bwd:
    return jax.jit(lambda q, k, v: fn(q, k, v, causal))
  loss = lambda q, k, v: fn(q, k, v, causal).astype(jnp.float32).sum()
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _temp_bytes(jitted, *args):
  try:
    ma = jitted.lower(*args).compile().memory_analysis()
    return None if ma is None else ma.temp_size_in_bytes
  except Exception:  # noqa: BLE001 - not every backend reports it
    return None


def _mib(x):
  return "n/a" if x is None else f"{x / 2 ** 20:.1f}"


HEADER = ["L", "K", "BxH", "mask", "pass", "pallas TF/s", "xla TF/s", "cudnn TF/s",
          "jax-ops TF/s", "pallas/xla", "pallas/cudnn", "xla temp MiB", "pallas temp MiB",
          "LxL f32 MiB"]


def run(args, quiet: bool = False):
  """Returns (rows, mem_rows): lists of string cells, rows in the order of HEADER."""
  platform = jax.default_backend()
  dtype = jnp.dtype(args.dtype)
  impls = _impls(platform)
  rows = []
  for l in args.seqs:
    for d in args.head_dims:
      h = max(1, args.width // d)
      b = max(1, args.tokens // l)
      ks = jax.random.split(jax.random.PRNGKey(0), 3)
      q, k, v = (jax.random.normal(kk, (b, l, h, d), dtype) for kk in ks)
      for causal in getattr(args, "masks", (True, False)):
        for bwd in getattr(args, "passes", (False, True)):
          fns, mem = {}, {}
          for name, fn in impls.items():
            f = _make(fn, causal, bwd)
            try:
              jax.block_until_ready(f(q, k, v))
            except Exception as e:  # noqa: BLE001 - e.g. cuDNN rejecting a shape, OOM
              print(f"  {name} L={l} K={d}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
              continue
            fns[name] = lambda f=f: f(q, k, v)
            if name in ("xla", "pallas"):
              mem[name] = _temp_bytes(f, q, k, v)
          times = time_interleaved(fns, repeats=args.repeats, warmup=0)
          fl = _flops(b, l, h, d, causal, bwd)
          t = lambda n: times.get(n)
          tf = lambda n: "-" if t(n) is None else f"{fl / t(n) / 1e12:.3g}"
          ratio = lambda a, c: "-" if t(a) is None or t(c) is None else f"{t(c) / t(a):.2f}"
          rows.append([
              str(l), str(d), f"{b}x{h}", "causal" if causal else "full",
              "fwd+bwd" if bwd else "fwd", tf("pallas"), tf("xla"), tf("cudnn"), tf("jax-ops"),
              ratio("pallas", "xla"), ratio("pallas", "cudnn"),
              _mib(mem.get("xla")), _mib(mem.get("pallas")), _mib(b * h * l * l * 4)])
  mem_rows = _memory_rows(args, impls, dtype) if args.mem_seqs else []
  if quiet:
    return rows, mem_rows
  header = HEADER
  print(f"\nattention benchmark on {hardware()}, dtype {dtype.name}"
        + (" (smoke: Pallas interpreted on CPU, ratios are not GPU ratios)" if args.smoke else ""))
  print("ratios are time(baseline) / time(pallas): > 1 means Pallas is faster\n")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for r in rows:
    print("| " + " | ".join(r) + " |")
  if mem_rows:
    header = ["L", "K", "BxH", "pass", "xla temp MiB", "pallas temp MiB", "LxL f32 MiB",
              "pallas < LxL"]
    print("\ncompiled temporary memory at longer lengths (compile only, causal):\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in mem_rows:
      print("| " + " | ".join(r) + " |")
  return rows, mem_rows


def _memory_rows(args, impls, dtype):
  """Compiled temp bytes without running (cheap even where running would not be)."""
  rows = []
  d = args.head_dims[0]
  h = max(1, args.width // d)
  for l in args.mem_seqs:
    b = max(1, args.tokens // l)
    x = jax.ShapeDtypeStruct((b, l, h, d), dtype)
    for bwd in (False, True):
      mem = {n: _temp_bytes(_make(impls[n], True, bwd), x, x, x) for n in ("xla", "pallas")}
      lxl = b * h * l * l * 4
      ok = "-" if mem["pallas"] is None else ("yes" if mem["pallas"] < lxl / 4 else "NO")
      rows.append([str(l), str(d), f"{b}x{h}", "fwd+bwd" if bwd else "fwd", _mib(mem["xla"]),
                   _mib(mem["pallas"]), _mib(lxl), ok])
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU (interpreter)")
  p.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
  p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
  p.add_argument("--tokens", type=int, default=16384, help="B * L per call")
  p.add_argument("--width", type=int, default=2048, help="H * K")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mem-seqs", type=int, nargs="*", default=[],
                 help="extra lengths whose compiled memory is reported (compile only)")
  args = p.parse_args(argv)
  if args.smoke:
    args.seqs, args.head_dims, args.tokens, args.width, args.repeats = [96], [32], 96, 64, 2
    args.mem_seqs = [2048]
  run(args)


if __name__ == "__main__":
  main()
