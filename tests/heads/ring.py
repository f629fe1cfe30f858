"""A known 2-D target for the continuous heads: an 8-component Gaussian mixture on a ring
(means at radius RADIUS, angles 2 pi k / 8, isotropic std STD, equal weights), the heads' training
on it, and the distances the tests score samples by.

`python -m tests.heads.ring` trains the diffusion and flow heads once (fixed seed) and writes
their parameters to tests/heads/fixtures/ring_{diffusion,flow}.npz; tests/heads/test_diffusion.py and
test_flow.py sample from those parameters (`python -m tests.heads.ring shortcut`: ring_shortcut.npz
for tests/heads/test_shortcut.py).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from arjax.heads.diffusion import DiffusionFields, DiffusionHead
from arjax.heads.flow import FlowFields, FlowHead
from arjax.heads.shortcut import ShortcutFields, ShortcutHead

RADIUS, STD, K = 1.5, 0.15, 8
MEANS = RADIUS * np.stack([np.cos(2 * np.pi * np.arange(K) / K),
                           np.sin(2 * np.pi * np.arange(K) / K)], -1)
Z_DIM = 4                # h [B, 1, Z_DIM] fed to the head: a constant (unconditional target).
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "ring_{kind}.npz")

# The heads as trained for the fixture (small: W 64, 3 blocks).
DIFFUSION = DiffusionFields(width=64, depth=3, diffusion_batch_mul=4, num_sampling_steps=100)
FLOW = FlowFields(width=64, depth=3, batch_mul=4, num_sampling_steps=50)
SHORTCUT = ShortcutFields(width=64, depth=3, batch_mul=4, consistency_draws=1, max_steps=8,
                          num_sampling_steps=4)


class _Tokens2:  # tokenizer stand-in: continuous tokens of C = 2 channels.
  vocab_size, token_dim = 0, 2


def ring_samples(rng: np.random.Generator, n: int) -> np.ndarray:
  k = rng.integers(0, K, n)
  return MEANS[k] + STD * rng.normal(size=(n, 2))


def build(kind: str, fields=None, seed: int = 0):
  cls, f = {"diffusion": (DiffusionHead, DIFFUSION), "flow": (FlowHead, FLOW),
            "shortcut": (ShortcutHead, SHORTCUT)}[kind]
  return cls(Z_DIM, _Tokens2(), fields or f, rngs=nnx.Rngs(seed))


def condition(n: int):
  """The constant conditioning h [n, 1, Z_DIM]."""
  return jnp.ones((n, 1, Z_DIM), jnp.float32)


def train(head, steps: int, batch: int = 256, lr: float = 2e-3, seed: int = 0,
          verbose: bool = False):
  """Adam on the head's loss over fresh ring draws; cosine-decayed lr. Returns the last losses."""
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt = tx.init(params)

  def loss_fn(p, x, key):
    dist = nnx.merge(graphdef, p, rest)(condition(x.shape[0]))
    return dist.loss(x[:, None], key=key)[0]

  @jax.jit
  def step(p, o, x, key):
    loss, g = jax.value_and_grad(loss_fn)(p, x, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  losses = []
  for i in range(steps):
    x = jnp.asarray(ring_samples(rng, batch), jnp.float32)
    params, opt, loss = step(params, opt, x, jax.random.fold_in(key, i))
    losses.append(float(loss))
    if verbose and (i + 1) % 250 == 0:
      print(f"step {i + 1}: loss {np.mean(losses[-250:]):.4f}", flush=True)
  nnx.update(head, params)
  return losses


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
  """2 E|x - y| - E|x - x'| - E|y - y'| (V-statistic, float64)."""
  d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return 2 * d(x, y) - d(x, x) - d(y, y)


def mode_stats(x: np.ndarray):
  """(fraction of samples nearest each mode [K], std of the samples around their mode,
  fraction farther than 4 STD from every mode)."""
  dist = np.sqrt(((x[:, None] - MEANS[None]) ** 2).sum(-1))
  k = dist.argmin(1)
  near = dist.min(1) < 4 * STD
  frac = np.bincount(k[near], minlength=K) / len(x)
  resid = (x - MEANS[k])[near]
  return frac, resid.std(), 1.0 - near.mean()


def sample(head, n: int, seed: int = 0, **kw):
  """n samples [n, 2] of the head at the constant condition."""
  fn = jax.jit(lambda key: head(condition(n)).sample(key, **kw))
  return np.asarray(fn(jax.random.key(seed)))[:, 0]


def save_fixture(kind: str, steps: int = 3000):
  head = build(kind)
  t0 = time.time()
  losses = train(head, steps, verbose=True)
  print(f"{kind}: {steps} steps in {time.time() - t0:.1f}s, loss {np.mean(losses[:50]):.4f} "
        f"-> {np.mean(losses[-50:]):.4f}", flush=True)
  out = {"/".join(str(p) for p in path_): np.asarray(var[...], np.float32)
         for path_, var in nnx.to_flat_state(nnx.state(head, nnx.Param))}
  path = FIXTURE.format(kind=kind)
  np.savez_compressed(path, **out)
  print("wrote", path, os.path.getsize(path), "bytes", flush=True)
  x = sample(head, 2000)
  ref = ring_samples(np.random.default_rng(1), 2000)
  print(kind, "energy distance", energy_distance(x, ref), "mode stats", mode_stats(x),
        flush=True)


def load(kind: str):
  """The head `kind` with the fixture's trained parameters."""
  head = build(kind)
  blob = np.load(FIXTURE.format(kind=kind))
  flat = nnx.to_flat_state(nnx.state(head, nnx.Param))
  for path_, var in flat:
    var[...] = jnp.asarray(blob["/".join(str(p) for p in path_)])
  nnx.update(head, nnx.from_flat_state(flat))
  return head


if __name__ == "__main__":
  import sys
  for kind in sys.argv[1:] or ("diffusion", "flow"):
    save_fixture(kind)
