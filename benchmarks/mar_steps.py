"""MAR's sampling time against its reveal-step count, at docs/continuous.md's model size.

  python benchmarks/mar_steps.py [--steps 8,16,49] [--batch 20] [--repeats 3] [--tiny]

The experiment's MAR row (configs/continuous/compare.py:row=mar: 2 + 2 blocks of width 96, the
diffusion head 128 x 3 with 100 DDPM steps, CFG 2.0, 7x7x4 latents) with random weights (the
sampling cost does not depend on them). For each reveal-step count K it prints, timed
interleaved in one process (benchmarks/common.time_interleaved, median of --repeats calls of
one batch after a warm-up call):

  seconds per batch of the 'order' sampler and the ratio to the first K's,
  the cells the sampler draws per image (sum over the steps of the step's draw width; an exact
  count needs 49 = N), and
  a model of the time: K x (one backbone pass) + (cells drawn) x (one cell's head draw), from
  the two parts timed alone (the encoder-decoder on the doubled batch; the head's 100-step
  guided reverse chain on the doubled batch's cells).

`--tiny`: a 1 + 1 block width-32 model with a 4-step head (the test's size; seconds).

Legend: B batch, N tokens (49), K reveal steps.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import block, hardware, time_interleaved

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


def cells_drawn(sampler, model) -> int:
  """Cells the sampler's head draws per image over all steps (N when no draw is wasted)."""
  widths = getattr(sampler, "draw_widths", None)
  if widths is not None:
    return int(sum(widths(model.order, model.num_tokens)))
  return int(model.order.num_steps() * model.order.max_reveal())


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--steps", default="8,16,49")
  p.add_argument("--batch", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args(argv)
  ks = [int(s) for s in args.steps.split(",") if s]
  key = jax.random.key(0)
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
  fns, drawn, params = {}, {}, None
  for k in ks:
    fm, c, sampler = build(k, args.tiny)
    params = fm.initial_params() if params is None else params   # one set of weights for all.
    fns[f"K={k}"] = (lambda s=sampler: s.sample_tokens(params, labels, key))
    drawn[k] = cells_drawn(sampler, fm.bind(params))
  model = fm.bind(params)
  n = model.num_tokens

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
    cond_d = jax.tree.map(lambda x: x[:half], d)
    unc_d = jax.tree.map(lambda x: x[half:], d)
    return cond_d.guide(unc_d, 2.0).sample(jax.random.key(1))

  head = jax.jit(head_draw)
  parts = time_interleaved({"backbone": lambda: cond(params, toks, two, masked),
                            "head": lambda: head(params, z)}, repeats=args.repeats, warmup=1)
  t_bb, t_cell = parts["backbone"], parts["head"] / width
  med = time_interleaved(fns, repeats=args.repeats, warmup=1)

  print(f"# MAR sampling time vs reveal steps ({hardware()}); batch {args.batch}, "
        f"{'tiny' if args.tiny else 'the experiment'}'s model, random weights")
  print(f"backbone pass (doubled batch {2 * args.batch}): {t_bb * 1e3:.1f} ms; head draw per cell "
        f"per image (guided, {model.head.fields.num_sampling_steps} steps): "
        f"{t_cell * 1e3:.2f} ms")
  print("| K | s / batch | ratio to K=%d | cells drawn / image | model: K x backbone + cells x head"
        " (s) |" % ks[0])
  print("|---|---|---|---|---|")
  for k in ks:
    t = med[f"K={k}"]
    print(f"| {k} | {t:.3f} | {t / med[f'K={ks[0]}']:.2f} | {drawn[k]} | "
          f"{k * t_bb + drawn[k] * t_cell:.3f} |")
  return med


if __name__ == "__main__":
  main()
