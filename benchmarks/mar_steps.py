"""MAR's sampling time against its reveal-step count, at docs/continuous.md's model size.

  python benchmarks/mar_steps.py [--steps 8,16,49] [--batch 20] [--repeats 3] [--clock wall|cpu]
                                 [--tiny]

The experiment's MAR row (configs/continuous/compare.py:row=mar: 2 + 2 blocks of width 96, the
diffusion head 128 x 3 with 100 DDPM steps, CFG 2.0, 7x7x4 latents) with random weights (the
sampling cost does not depend on them). For each reveal-step count K, timed interleaved in one
process (benchmarks/common.time_interleaved, median of --repeats calls of one batch after a
warm-up call; --clock cpu: this process's CPU seconds, robust to a loaded machine), two rows:

  exact    the 'order' sampler as it runs: step k draws the reveal_counts(N)[k] cells it
           reveals, N = 49 head draws per image in all;
  padded   the same sampler given an all-False `known` (the inpainting path, and before the fix
           every path): each step draws max_reveal() cells, K x max_reveal() per image;

with seconds per batch, the ratio to the first K's exact row, the head draws per image, and a
model of the time: K x (one backbone pass) + (draws) x (one cell's head draw), from the two
parts timed alone (the encoder-decoder on the doubled batch; the head's guided 100-step reverse
chain for one cell of each image of the batch).

`--tiny`: a 1 + 1 block width-32 model with a 4-step head (seconds).

Legend: B batch, N tokens (49), K reveal steps.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import hardware, time_interleaved

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mar_config(steps: int, tiny: bool = False):
  """The experiment's MAR row at K = steps reveal steps, its tokenizer without a checkpoint."""
  from arjax.config import load_config
  spec = os.path.join(ROOT, "configs", "continuous", "compare.py") + ":row=mar" + (
      ",tiny" if tiny else "")
  c = load_config(spec)
  c.tokenizer.checkpoint = ""     # tokens only: nothing is decoded.
  c.order.num_steps = int(steps)
  return c


def build(steps: int, tiny: bool = False):
  """(functional model, config, sampler) of the MAR row at `steps` reveal steps."""
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  from arjax.sampling import build_sampler, sampling_from_config
  c = mar_config(steps, tiny)
  fm = FunctionalModel(build_model(c, seed=0))
  return fm, c, build_sampler(fm, sampling_from_config(c), c)



def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--steps", default="8,16,49")
  p.add_argument("--batch", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args(argv)
  from benchmarks.sampling import cpu_interleaved
  timer = ((lambda f: time_interleaved(f, repeats=args.repeats, warmup=1)) if args.clock == "wall"
           else (lambda f: cpu_interleaved(f, args.repeats)))
  ks = [int(s) for s in args.steps.split(",") if s]
  key = jax.random.key(0)
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
  fns, drawn, params = {}, {}, None
  for k in ks:
    fm, c, sampler = build(k, args.tiny)
    params = fm.initial_params() if params is None else params   # one set of weights for all.
    model = fm.bind(params)
    n = model.num_tokens
    known = jnp.zeros((args.batch, n), bool)
    given = jnp.zeros((args.batch, n) + tuple(model.head.token_shape), jnp.float32)
    fns[f"{k} exact"] = (lambda s=sampler: s.sample_tokens(params, labels, key))
    fns[f"{k} padded"] = (lambda s=sampler: s.sample_tokens(params, labels, key, known=known,
                                                             given=given))
    drawn[f"{k} exact"] = sum(sampler.draw_widths(model.order, n))
    drawn[f"{k} padded"] = k * model.order.max_reveal()

  # The parts alone: one backbone pass on the doubled batch; one guided head draw of W cells.
  two = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
  toks = jnp.zeros((2 * args.batch, n) + tuple(model.head.token_shape), jnp.float32)
  masked = jnp.arange(n)[None].repeat(2 * args.batch, 0) % 2 == 0
  cond = jax.jit(lambda p, t, l, m: fm.bind(p).condition(t, l, m))
  z = cond(params, toks, two, masked)
  width = 8

  def head_draw(p, z):
    d = fm.bind(p).head(z[:, :width])
    half = args.batch
    return jax.tree.map(lambda x: x[:half], d).guide(jax.tree.map(lambda x: x[half:], d),
                                                     2.0).sample(jax.random.key(1))

  head = jax.jit(head_draw)
  parts = timer({"backbone": lambda: cond(params, toks, two, masked),
                 "head": lambda: head(params, z)})
  t_bb, t_cell = parts["backbone"], parts["head"] / width
  med = timer(fns)

  first = f"{ks[0]} exact"
  print(f"# MAR sampling time vs reveal steps ({hardware()}); batch {args.batch}, "
        f"{'tiny' if args.tiny else 'the experiment'}'s model, random weights, clock "
        f"{args.clock}, median of {args.repeats}")
  print(f"backbone pass (doubled batch {2 * args.batch}): {t_bb * 1e3:.1f} ms; head draw of one "
        f"cell per image (guided, {model.head.fields.num_sampling_steps} steps): "
        f"{t_cell * 1e3:.2f} ms")
  print(f"| K | draws | s / batch | ratio to K={ks[0]} exact | head draws / image | "
        "model: K x backbone + draws x head (s) |")
  print("|---|---|---|---|---|---|")
  for name, t in med.items():
    k = int(name.split()[0])
    print(f"| {k} | {name.split()[1]} | {t:.3f} | {t / med[first]:.2f} | {drawn[name]} | "
          f"{k * t_bb + drawn[name] * t_cell:.3f} |")
  return med


if __name__ == "__main__":
  main()
