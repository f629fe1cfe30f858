"""Train-step throughput and MFU, and the overhead of arjax's step over a bare-jax transformer.

  python benchmarks/train_step.py [--layers 4 --dim 256 --tokens 196 --batch 16]
                                  [--peak_tflops P] [--dtype bfloat16] [--scan] [--remat R]
                                  [--smoke]

Both steps have the same shapes and analytic FLOPs (arjax.train.flops) and the same optax
AdamW; the bare one is plain jnp functions over a dict of arrays (no Flax, no sharding
annotations). They are timed interleaved in one process. Prints tokens/s, achieved TFLOP/s, MFU
(when --peak_tflops is given, e.g. 989 for an H100's dense bf16) and the time ratio
arjax / bare (goal <= 1.05). --scan runs arjax's blocks as one lax.scan over stacked layers
(`model.backbone.scan_layers`) against the same bare loop; --remat sets `model.backbone.remat`.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import hardware, time_interleaved


def make_config(args):
  from arjax.config import base_config
  c = base_config()
  grid = int(round(args.tokens ** 0.5))
  c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.grid = "cached", args.vocab, grid
  b = c.model.backbone
  b.num_layers, b.dim, b.num_heads, b.multiple_of = args.layers, args.dim, args.heads, 64
  b.dtype = args.dtype
  b.scan_layers, b.remat = args.scan, args.remat
  b.rope_null = "identity"
  c.model.class_dropout = 0.0
  c.train.batch_size = args.batch
  c.mesh.data = 1
  return c


# -- the bare-jax baseline --------------------------------------------------------------------
def bare_init(key, cfg, vocab, num_classes):
  d, h, k, f, n = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.hidden_dim, cfg.num_layers
  keys = iter(jax.random.split(key, 8 * n + 4))
  nrm = lambda shape, fan: jax.random.normal(next(keys), shape) * fan ** -0.5
  layers = [dict(an=jnp.ones(d), wq=nrm((d, h, k), d), wk=nrm((d, h, k), d), wv=nrm((d, h, k), d),
                 wo=nrm((h, k, d), d), mn=jnp.ones(d), w1=nrm((d, f), d), w3=nrm((d, f), d),
                 w2=nrm((f, d), f)) for _ in range(n)]
  return dict(tok=nrm((vocab, d), 50), cls=nrm((num_classes + 1, d), 50), layers=layers,
              norm=jnp.ones(d), head=nrm((d, vocab), 50))


def bare_loss(p, tokens, labels, cfg, dtype):
  def rms(x, s):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + 1e-5) * s).astype(dtype)

  b, n = tokens.shape
  x = jnp.concatenate([p["cls"][labels][:, None], p["tok"][tokens[:, :-1]]], 1).astype(dtype)
  pos = jnp.arange(n, dtype=jnp.float32)
  k_dim = cfg.head_dim
  freqs = 1.0 / (10000.0 ** (jnp.arange(0, k_dim, 2) / k_dim))
  ang = pos[:, None] * freqs
  cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]

  def rope(t):
    t2 = t.astype(jnp.float32).reshape(*t.shape[:-1], -1, 2)
    a, c = t2[..., 0], t2[..., 1]
    return jnp.stack([a * cos - c * sin, c * cos + a * sin], -1).reshape(t.shape).astype(dtype)

  mask = jnp.tril(jnp.ones((n, n), bool))
  for l in p["layers"]:
    c = lambda w: w.astype(dtype)
    hdn = rms(x, l["an"])
    q = rope(jnp.einsum("bld,dhk->blhk", hdn, c(l["wq"])))
    k = rope(jnp.einsum("bld,dhk->blhk", hdn, c(l["wk"])))
    v = jnp.einsum("bld,dhk->blhk", hdn, c(l["wv"]))
    s = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) * k_dim ** -0.5
    s = jnp.where(mask, s, -1e30)
    a = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(s, -1).astype(dtype), v)
    x = x + jnp.einsum("blhk,hkd->bld", a, c(l["wo"]))
    hdn = rms(x, l["mn"])
    x = x + (jax.nn.silu(hdn @ c(l["w1"])) * (hdn @ c(l["w3"]))) @ c(l["w2"])
  logits = (rms(x, p["norm"]) @ p["head"].astype(dtype)).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--dim", type=int, default=256)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--tokens", type=int, default=196)
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--steps_per_call", type=int, default=3)
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="device peak for MFU (e.g. 989 for H100 bf16 dense)")
  ap.add_argument("--scan", action="store_true", help="model.backbone.scan_layers=True")
  ap.add_argument("--remat", default="none", help="model.backbone.remat policy")
  ap.add_argument("--smoke", action="store_true")
  args = ap.parse_args(argv)
  if args.smoke:
    args.layers, args.dim, args.heads, args.tokens, args.batch = 1, 64, 2, 16, 2
    args.repeats, args.steps_per_call = 1, 1

  from arjax.models import build_model
  from arjax.nn.transformer import TransformerConfig
  from arjax.train.flops import model_flops
  from arjax.core.functional import FunctionalModel
  from arjax.train.optim import make_optimizer, learning_rate_schedule
  from arjax.train.state import initial_state
  from arjax.train.step import make_train_step

  config = make_config(args)
  fm = FunctionalModel(build_model(config, seed=0))
  tx = make_optimizer(config.train)
  state = initial_state(fm.initial_params(), tx, 0, False)
  lib_step = jax.jit(make_train_step(fm, tx, learning_rate_schedule(config.train), 0.0),
                     donate_argnums=(0,))
  cfg = TransformerConfig.from_config(config.model.backbone)
  n = fm.bind(fm.initial_params()).tokenizer.tokens_per_image
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, args.vocab, (args.batch, n)), jnp.int32),
           "label": jnp.asarray(rng.integers(0, 10, (args.batch,)), jnp.int32)}
  dtype = jnp.dtype(args.dtype)
  bare_params = bare_init(jax.random.key(0), cfg, args.vocab, 10)
  bare_opt = tx.init(bare_params)

  @jax.jit
  def bare_step(params, opt, tokens, labels):
    loss, g = jax.value_and_grad(bare_loss)(params, tokens, labels, cfg, dtype)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  holder = {"lib": state, "bare": (bare_params, bare_opt)}

  def run_lib():
    for _ in range(args.steps_per_call):
      holder["lib"], m = lib_step(holder["lib"], batch)
    return holder["lib"].params

  def run_bare():
    p, o = holder["bare"]
    for _ in range(args.steps_per_call):
      p, o, _ = bare_step(p, o, batch["tokens"], batch["label"])
    holder["bare"] = (p, o)
    return p

  times = time_interleaved({"arjax": run_lib, "bare": run_bare}, repeats=args.repeats)
  flops = model_flops(config)
  per_step = flops["train_flops_per_step"]
  print(f"hardware: {hardware()}")
  print(f"model: {args.layers} layers ({'scan' if args.scan else 'loop'}, remat {args.remat}), "
        f"width {args.dim}, {fm.param_count():,} params, {n} tokens x batch {args.batch}, "
        f"{args.dtype}; analytic train FLOPs/step {per_step:.3e}")
  for k, t in times.items():
    step_s = t / args.steps_per_call
    tflops = per_step / step_s / 1e12
    mfu = f", MFU {100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops else ""
    print(f"{k:6s} {step_s * 1e3:9.2f} ms/step  {args.batch * n / step_s:10.0f} tokens/s  "
          f"{tflops * 1e3:8.2f} GFLOP/s{mfu}")
  print(f"ratio arjax/bare step time: {times['arjax'] / times['bare']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
