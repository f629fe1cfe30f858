"""Every hardware figure in one run, written to one JSON (run by benchmarks/device_check.sh).

  python benchmarks/device_check.py --out device_check.json          # a GPU or TPU: < 8 min
  python benchmarks/device_check.py --smoke --out /tmp/dc.json       # CPU: tiny sizes

Sections (each timed; an exception is recorded in `sections[name].error` and the run goes on;
the JSON is rewritten after every section, so a run cut short keeps what it measured):
  kernels     arjax's Pallas kernels (impl='pallas': flash forward, its backward, the split-K
              decode kernel) against the jnp reference computed in float32 at HIGHEST precision
              from the same inputs, in bfloat16 and float32, lengths not divisible by the tile,
              grouped-query heads; max abs error, tolerance, ok. On a CPU the kernels run in the
              Pallas interpreter.
  attention   `benchmarks/attention.py` at L = 1k / 4k / 8k (smoke: 64): TFLOP/s of pallas,
              xla, cudnn and JAX's Pallas op, fwd and fwd+bwd, causal and full.
  train_step  the real train step of a LlamaGen-L-shaped model (configs/imagenet256/llamagen.py
              size=L, bf16 compute) with scan_layers and remat: step time, tokens/s, TFLOP/s
              from the analytic FLOP count, MFU against the device's dense bf16 peak.
  decode      batch-1 greedy decoding of 256 tokens with the KV cache (bf16 parameters): time per
              token against the weight-bandwidth floor (parameter bytes / HBM bandwidth).
Peak TFLOP/s and HBM bandwidth come from the device kind (DEVICE_PEAKS) or --peak_tflops /
--hbm_gbps; unknown devices leave MFU and the floor null.

Legend: B batch, L length, H heads, K head dim.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import hardware

# device_kind substring -> (dense bf16 TFLOP/s, HBM GB/s), from the vendors' data sheets.
DEVICE_PEAKS = {
    "H200": (989.0, 4800.0),
    "H100": (989.0, 3350.0),
    "A100": (312.0, 2039.0),
    "L4": (121.0, 300.0),
    "TPU v5p": (459.0, 2765.0),
    "TPU v5 lite": (197.0, 819.0),
    "TPU v4": (275.0, 1228.0),
}

SECTIONS = ("kernels", "attention", "train_step", "decode")


def device_peaks(args):
  kind = getattr(jax.devices()[0], "device_kind", "")
  peak, bw = next(((p, b) for k, (p, b) in DEVICE_PEAKS.items() if k.lower() in kind.lower()),
                  (None, None))
  return kind, args.peak_tflops or peak, args.hbm_gbps or bw


# -- kernels ------------------------------------------------------------------------------------
KERNEL_TOL = {"float32": 2e-3, "bfloat16": 3e-2}  # f32: GPU matmuls may run in TF32.


def _kernel_cases(smoke: bool):
  """(name, b, lq, lk, h, hkv, d, spec kind, decode) with lengths off the tile (128 / 64)."""
  if smoke:  # the interpreter is slow: one flash case and the decode case.
    return [("flash_causal", 1, 37, 37, 2, 1, 16, "causal", False),
            ("decode_per_row", 2, 1, 45, 4, 2, 16, "decode", True)]
  return [("flash_causal", 2, 1000, 1000, 8, 2, 128, "causal", False),
          ("flash_full_q!=k", 2, 777, 1029, 8, 8, 64, "bidirectional", False),
          ("decode_per_row", 4, 1, 4100, 16, 4, 128, "decode", True)]


def check_kernels(args):
  from arjax import kernels
  from arjax.kernels.masks import MaskSpec
  from arjax.kernels.reference import attention_reference
  out = []
  for name, b, lq, lk, h, hkv, d, kind, decode in _kernel_cases(args.smoke):
    for dtype in ("float32", "bfloat16"):
      ks = jax.random.split(jax.random.key(0), 4)
      q = jax.random.normal(ks[0], (b, lq, h, d), dtype)
      k = jax.random.normal(ks[1], (b, lk, hkv, d), dtype)
      v = jax.random.normal(ks[2], (b, lk, hkv, d), dtype)
      do = jax.random.normal(ks[3], (b, lq, h, d), dtype)
      if decode:  # rows at different cache positions, as in batched sampling.
        off = jnp.asarray(np.linspace(lk // 3, lk - 1, b).astype(np.int32))
        spec = MaskSpec(kind="causal", q_offset=off, kv_length=off + 1)
      else:
        spec = MaskSpec(kind=kind)
      f32 = lambda x: x.astype(jnp.float32)
      hi = jax.lax.Precision.HIGHEST
      ref = lambda q, k, v: attention_reference(f32(q), f32(k), f32(v), spec, precision=hi)
      pal = lambda q, k, v: kernels.attention(q, k, v, spec, impl="pallas")
      passes = [("fwd", lambda fn: jax.jit(fn)(q, k, v))]
      if not decode:
        passes.append(("bwd", lambda fn: jax.jit(
            lambda q, k, v: jax.vjp(fn, q, k, v)[1](do.astype(fn(q, k, v).dtype)))(q, k, v)))
      for pname, run in passes:
        t0 = time.perf_counter()
        want = jax.tree.map(np.asarray, run(ref))
        got = jax.tree.map(lambda x: np.asarray(x, np.float32), run(pal))
        err = max(float(np.abs(g - w).max()) for g, w in zip(jax.tree.leaves(got),
                                                               jax.tree.leaves(want)))
        scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
        tol = KERNEL_TOL[dtype] * max(1.0, scale)
        out.append({"case": name, "pass": pname, "dtype": dtype, "B": b, "Lq": lq, "Lk": lk,
                    "H": h, "Hkv": hkv, "K": d, "max_abs_err": err, "ref_max_abs": scale,
                    "tol": tol, "ok": bool(err <= tol),
                    "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  kernel {name} {pname} {dtype}: err {err:.2e} (tol {tol:.1e})", flush=True)
  return {"cases": out, "all_ok": all(c["ok"] for c in out)}


# -- attention throughput -----------------------------------------------------------------------
def attention_speed(args):
  from benchmarks import attention
  a = SimpleNamespace(smoke=args.smoke, seqs=[64] if args.smoke else [1024, 4096, 8192],
                      head_dims=[32] if args.smoke else [128], tokens=64 if args.smoke else 16384,
                      width=64 if args.smoke else 2048, dtype="bfloat16",
                      repeats=1 if args.smoke else 3, mem_seqs=[],
                      masks=(True,) if args.smoke else (True, False),
                      passes=(False,) if args.smoke else (False, True))
  rows, _ = attention.run(a, quiet=True)
  return {"rows": [dict(zip(attention.HEADER, r)) for r in rows],
          "note": "smoke: Pallas interpreted on CPU" if args.smoke else ""}


# -- train step MFU -----------------------------------------------------------------------------
def llamagen_config(args, batch: int):
  from benchmarks import mfu
  config = mfu.make_config(SimpleNamespace(size="L", dtype="bfloat16", smoke=args.smoke,
                                           batch_per_device=batch))
  config.unlock()
  b = config.model.backbone
  b.scan_layers, b.remat = True, args.remat
  config.model.class_dropout = 0.0
  return config


def train_step_mfu(args, peak):
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  from arjax.train.flops import model_flops
  from arjax.train.optim import learning_rate_schedule, make_optimizer
  from arjax.train.state import initial_state
  from arjax.train.step import make_train_step
  batch_size = 2 if args.smoke else args.batch
  config = llamagen_config(args, batch_size)
  config.train.batch_size = batch_size  # one device.
  fm = FunctionalModel(build_model(config, seed=0))
  tx = make_optimizer(config.train)
  state = initial_state(fm.initial_params(), tx, 0, False)
  flops = model_flops(config)
  n = flops["seq_len"]
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, config.tokenizer.vocab_size, (batch_size, n)),
                                 jnp.int32),
           "label": jnp.asarray(rng.integers(0, config.model.num_classes, (batch_size,)),
                                jnp.int32)}
  step = make_train_step(fm, tx, learning_rate_schedule(config.train), 0.0)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  for _ in range(1 if args.smoke else 3):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(2 if args.smoke else 10):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  tflops = flops["train_flops_per_step"] / step_s / 1e12
  return {"model": "llamagen L" + (" (smoke: 1 layer, width 64)" if args.smoke else ""),
          "params": fm.param_count(), "scan_layers": True, "remat": args.remat,
          "dtype": "bfloat16", "batch": batch_size, "seq_len": n,
          "attention_impl": config.model.backbone.attention_impl,
          "compile_s": compile_s, "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
          "step_ms": step_s * 1e3, "tokens_per_s": flops["tokens_per_step"] / step_s,
          "train_flops_per_step": flops["train_flops_per_step"], "tflops": tflops,
          "peak_tflops": peak, "mfu": None if not peak else tflops / peak,
          "loss": float(metrics.compute()["loss"])}


# -- batch-1 decode latency ---------------------------------------------------------------------
def decode_latency(args, hbm_gbps):
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  config = llamagen_config(args, 1)
  fm = FunctionalModel(build_model(config, seed=0))
  # Inference weights in bf16: every step reads each parameter once (2 bytes).
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), fm.initial_params())
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  n = fm.bind(params).tokenizer.tokens_per_image

  @jax.jit
  def greedy(params, labels):
    model = fm.bind(params)
    caches = model.init_cache(1)
    dist, caches = model.decode_prefix(labels, caches)   # head Distribution [1, 1].

    def body(i, carry):
      tokens, logits, caches = carry
      tok = jnp.argmax(logits, -1).astype(jnp.int32)  # [1]
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, i, 1)
      dist, caches = model.decode_tokens(tok[:, None], i, caches)
      return tokens, dist.logits[:, -1], caches

    tokens = jnp.zeros((1, n), jnp.int32)
    return jax.lax.fori_loop(0, n, body, (tokens, dist.logits[:, -1], caches))[0]

  labels = jnp.asarray([3], jnp.int32)
  t0 = time.perf_counter()
  jax.block_until_ready(greedy(params, labels))
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(1 if args.smoke else 3):
    t0 = time.perf_counter()
    jax.block_until_ready(greedy(params, labels))
    times.append(time.perf_counter() - t0)
  per_token = float(np.median(times)) / n
  floor = None if not hbm_gbps else weight_bytes / (hbm_gbps * 1e9)
  return {"model": "llamagen L" + (" (smoke)" if args.smoke else ""), "params": fm.param_count(),
          "weight_bytes": weight_bytes, "tokens": n, "compile_and_first_s": first_s,
          "ms_per_token": per_token * 1e3, "hbm_gbps": hbm_gbps,
          "floor_ms_per_token": None if floor is None else floor * 1e3,
          "latency_over_floor": None if floor is None else per_token / floor}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="device_check.json")
  ap.add_argument("--smoke", action="store_true", help="tiny sizes, interpreted Pallas (CPU)")
  ap.add_argument("--sections", default=",".join(SECTIONS))
  ap.add_argument("--batch", type=int, default=32, help="train-step batch (one device)")
  ap.add_argument("--remat", default="dots_with_no_batch_dims_saveable")
  ap.add_argument("--peak_tflops", type=float, default=0.0)
  ap.add_argument("--hbm_gbps", type=float, default=0.0)
  args = ap.parse_args(argv)
  kind, peak, bw = device_peaks(args)
  report = {"hardware": hardware(), "platform": jax.default_backend(), "device_kind": kind,
            "mode": "smoke" if args.smoke else "full", "peak_tflops": peak, "hbm_gbps": bw,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
  runners = {"kernels": lambda: check_kernels(args), "attention": lambda: attention_speed(args),
             "train_step": lambda: train_step_mfu(args, peak),
             "decode": lambda: decode_latency(args, bw)}
  for name in args.sections.split(","):
    if name not in runners:
      raise SystemExit(f"unknown section {name!r}; expected some of {SECTIONS}")
    print(f"[device_check] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
      report[name] = runners[name]()
      report["sections"][name] = {"seconds": round(time.perf_counter() - t0, 1), "error": None}
    except Exception as e:  # noqa: BLE001 - record and go on: one failure must not lose the rest.
      traceback.print_exc()
      report[name] = None
      report["sections"][name] = {"seconds": round(time.perf_counter() - t0, 1),
                                  "error": f"{type(e).__name__}: {e}"[:2000]}
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1, default=str)
    print(f"[device_check] {name} done in {report['sections'][name]['seconds']} s", flush=True)
  failed = [n for n, s in report["sections"].items() if s["error"]]
  print(f"[device_check] wrote {args.out}; failed sections: {failed or 'none'}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
