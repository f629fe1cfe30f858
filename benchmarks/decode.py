"""KV-cached decoding vs recomputing the whole prefix at every step (same model, same tokens).

  python benchmarks/decode.py [--tokens 256] [--layers 2] [--dim 128] [--batch 4] [--smoke]

Prints tokens/s of both and their ratio (goal: >= 20x on a 2-core CPU at 256 tokens).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import hardware, time_interleaved


def build(args):
  from arjax.config import base_config
  from arjax.models import build_model
  from arjax.core.functional import FunctionalModel
  c = base_config()
  grid = int(round(args.tokens ** 0.5))
  c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.grid = "cached", 512, grid
  b = c.model.backbone
  b.num_layers, b.dim, b.num_heads, b.multiple_of = args.layers, args.dim, args.dim // 64, 64
  c.mesh.data = 1
  return FunctionalModel(build_model(c, seed=0)), c


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", type=int, default=256)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
  args = p.parse_args(argv)
  if args.smoke:
    args.tokens, args.layers, args.dim, args.batch, args.repeats = 16, 1, 64, 2, 1
  from arjax.sampling import SamplingConfig, SequentialSampler
  fm, config = build(args)
  params = fm.initial_params()
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
  sampler = SequentialSampler(fm, SamplingConfig(temperature=0.0))
  n = fm.bind(params).tokenizer.tokens_per_image

  @jax.jit
  def recompute(params, labels):
    """Greedy decoding that runs the full causal forward over N positions for every token."""
    model = fm.bind(params)

    def body(i, tokens):
      logits = model.logits(tokens, labels)
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
      return jax.lax.dynamic_update_index_in_dim(tokens, nxt.astype(jnp.int32), i, axis=1)

    return jax.lax.fori_loop(0, n, body, jnp.zeros((labels.shape[0], n), jnp.int32))

  key = jax.random.key(0)
  cached_tokens = sampler.sample_tokens(params, labels, key)
  recomputed = recompute(params, labels)
  same = bool((cached_tokens == recomputed).all())
  times = time_interleaved({
      "kv_cache": lambda: sampler.sample_tokens(params, labels, key),
      "recompute": lambda: recompute(params, labels)}, repeats=args.repeats)
  tps = {k: args.batch * n / v for k, v in times.items()}
  print(f"hardware: {hardware()}")
  print(f"model: {args.layers} layers, width {args.dim}, {fm.param_count():,} params; "
        f"{n} tokens x batch {args.batch}; greedy outputs identical: {same}")
  for k in times:
    print(f"{k:10s} {times[k]:8.3f} s  {tps[k]:10.1f} tokens/s")
  print(f"ratio kv_cache/recompute: {tps['kv_cache'] / tps['recompute']:.1f}x")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
