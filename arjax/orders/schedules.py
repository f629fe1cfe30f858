"""Step schedules of the orders: how many positions each sampling step predicts, how often
training uses a random order, and how much a masked model hides.

Every function is the formula of the paper it names (see docs/papers methods.md), written
for both numpy (static schedules, built once) and jnp (traced counts, e.g. an inpainting
mask that leaves a different number of unknown tokens in every sample).

Legend: N tokens to generate, T (or K) sampling steps, t (or k) a step index from 0.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MASK_SCHEDULES = ("cosine", "arccos", "linear", "square")


def mask_ratio(r, schedule: str = "cosine", xp=jnp):
  """Fraction of tokens still masked at progress r in [0, 1] (MaskGIT, Chang et al. 2022).

  cosine: cos(pi r / 2) (MaskGIT); arccos: arccos(r) / (pi / 2) (MaskGIL, Halton);
  linear: 1 - r; square: 1 - r^2.
  """
  if schedule == "cosine":
    return xp.cos(math.pi / 2 * r)
  if schedule == "arccos":
    return xp.arccos(xp.clip(r, 0.0, 1.0)) / (math.pi / 2)
  if schedule == "linear":
    return 1.0 - r
  if schedule == "square":
    return 1.0 - r * r
  raise ValueError(f"mask schedule {schedule!r}; expected one of {MASK_SCHEDULES}")


def check_steps(num_steps: int, num_tokens: int, what: str = "schedule") -> None:
  """A schedule must predict at least one token per step."""
  if num_steps < 1:
    raise ValueError(f"{what}: num_steps={num_steps}; expected >= 1")
  if num_steps > num_tokens:
    raise ValueError(f"{what}: num_steps={num_steps} is more than the {num_tokens} tokens to "
                     "generate; every step must predict at least one token")


def maskgit_num_masked(t, num_steps: int, num_unknown_start, num_unknown_now,
                       schedule: str = "cosine"):
  """Tokens left masked after step t of T (MaskGIT's `mask_schedule` + clipping).

  floor(N0 * gamma((t + 1) / T)), clipped to [1, unknown - 1] so every step reveals at least
  one token and keeps at least one for later; the last step reveals everything.
  """
  ratio = mask_ratio((t + 1) / num_steps, schedule)
  n = jnp.floor(num_unknown_start * ratio).astype(jnp.int32)
  n = jnp.clip(n, 1, jnp.maximum(num_unknown_now - 1, 0))
  return jnp.where(t >= num_steps - 1, 0, n)


def maskgit_gumbel_temperature(t, num_steps: int, base: float = 4.5, kind: str = "maskgit"):
  """Temperature of the Gumbel noise on confidences: annealed to 0.

  maskgit: base * (1 - (t + 1) / T) (MaskGIT); maskgil: base * (1 - t / (T - 1)) (MaskGIL).
  """
  if kind == "maskgit":
    return base * (1.0 - (t + 1) / num_steps)
  if kind == "maskgil":
    return base * (1.0 - t / max(num_steps - 1, 1))
  raise ValueError(f"gumbel temperature kind {kind!r}; expected 'maskgit' or 'maskgil'")


def maskgil_reveal_counts(num_steps: int, num_tokens: int, schedule: str = "arccos"
                          ) -> List[int]:
  """Tokens revealed at each step (MaskGIL / Halton `adap_sche`).

  v = gamma(linspace(1, 0, T)) with gamma the mask schedule (arccos(r)/(pi/2) by default),
  counts = round(N v / sum v), zeros raised to 1, the last step takes the rest.
  """
  check_steps(num_steps, num_tokens, "maskgil_reveal_counts")
  r = np.linspace(1.0, 0.0, num_steps)
  v = np.asarray(mask_ratio(r, schedule, xp=np), np.float64)
  counts = np.round(v / v.sum() * num_tokens)
  counts[counts == 0] = 1
  counts[-1] += num_tokens - counts.sum()
  counts = counts.astype(int).tolist()
  if min(counts) < 1:
    raise ValueError(f"maskgil_reveal_counts: num_steps={num_steps} leaves a step without a "
                     f"token for {num_tokens} tokens")
  return counts


def randar_cumulative(num_steps: int, num_tokens: int) -> List[int]:
  """Tokens decoded after each step of RandAR's parallel decoding (Pang et al. 2025).

  n_k = min(floor((1 - cos(pi/2 (k+1)/K)) N) + 1, N), at least one new token per step.
  """
  check_steps(num_steps, num_tokens, "randar_cumulative")
  out, prev = [], 0
  for k in range(num_steps):
    n = min(int(math.floor((1 - math.cos(math.pi / 2 * (k + 1) / num_steps)) * num_tokens)) + 1,
            num_tokens)
    n = max(n, prev + 1)
    # Leave at least one token for each later step.
    n = min(n, num_tokens - (num_steps - 1 - k))
    out.append(n)
    prev = n
  out[-1] = num_tokens
  return out


def arpg_mask_len(k: int, num_steps: int, num_tokens: int, schedule: str = "arccos") -> int:
  """Tokens still masked after step k of ARPG (Li et al. 2025).

  cosine: floor(N cos(pi/2 (k+1)/K)); arccos: floor(N arccos((k+1)/K) / (pi/2)).
  """
  r = (k + 1) / num_steps
  if schedule == "cosine":
    return int(math.floor(num_tokens * math.cos(math.pi / 2 * r)))
  if schedule == "arccos":
    return int(math.floor(num_tokens * math.acos(min(r, 1.0)) / (math.pi / 2)))
  raise ValueError(f"ARPG schedule {schedule!r}; expected 'cosine' or 'arccos'")


def arpg_cumulative(num_steps: int, num_tokens: int, schedule: str = "arccos") -> List[int]:
  """Tokens decoded after each ARPG step: N - mask_len, at least one new per step."""
  check_steps(num_steps, num_tokens, "arpg_cumulative")
  out, prev = [], 0
  for k in range(num_steps):
    n = num_tokens - arpg_mask_len(k, num_steps, num_tokens, schedule)
    n = max(n, prev + 1)
    n = min(n, num_tokens - (num_steps - 1 - k))
    out.append(n)
    prev = n
  out[-1] = num_tokens
  return out


# LPD's 20-step group sizes for 256 tokens (`orders/group_sizes_lookup.json`).
LPD_GROUP_SIZES_256_20 = (1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20,
                          20)


def cumulative_from_sizes(sizes: Sequence[int], num_tokens: int) -> List[int]:
  sizes = [int(s) for s in sizes]
  if min(sizes) < 1 or sum(sizes) != num_tokens:
    raise ValueError(f"group sizes {sizes} must be >= 1 and sum to the {num_tokens} tokens")
  return np.cumsum(sizes).tolist()


GROUP_SCHEDULES = ("one", "randar", "arpg_cosine", "arpg_arccos", "cosine", "arccos", "sizes")


def group_cumulative(schedule: str, num_steps: int, num_tokens: int,
                     sizes: Sequence[int] = ()) -> List[int]:
  """Cumulative tokens decoded after each step, by schedule name.

  one: one token per step (num_steps must be N); randar; arpg_cosine / arpg_arccos;
  cosine / arccos: MaskGIT-style schedules N (1 - gamma((k+1)/K)), at least one per step;
  sizes: explicit group sizes (LPD).
  """
  if schedule == "one":
    if num_steps not in (0, num_tokens):
      raise ValueError(f"group schedule 'one' takes {num_tokens} steps, got {num_steps}")
    return list(range(1, num_tokens + 1))
  if schedule == "randar":
    return randar_cumulative(num_steps, num_tokens)
  if schedule in ("arpg_cosine", "arpg_arccos"):
    return arpg_cumulative(num_steps, num_tokens, schedule.split("_")[1])
  if schedule in ("cosine", "arccos"):
    check_steps(num_steps, num_tokens, f"group schedule {schedule!r}")
    out, prev = [], 0
    for k in range(num_steps):
      masked = float(mask_ratio((k + 1) / num_steps, schedule, xp=np))
      n = max(int(round(num_tokens * (1 - masked))), prev + 1)
      n = min(n, num_tokens - (num_steps - 1 - k))
      out.append(n)
      prev = n
    out[-1] = num_tokens
    return out
  if schedule == "sizes":
    return cumulative_from_sizes(sizes, num_tokens)
  raise ValueError(f"group schedule {schedule!r}; expected one of {GROUP_SCHEDULES}")


def rar_random_ratio(step, start: int, end: int):
  """Probability of a random order at a training step (RAR, Yu et al. 2024).

  1 before `start`, 0 after `end`, linear in between: 1 - (step - start) / (end - start).
  Works on Python ints and traced arrays.
  """
  if end < start:
    raise ValueError(f"RAR annealing end={end} is before start={start}")
  if end == start:
    return jnp.where(jnp.asarray(step) < start, 1.0, 0.0)
  frac = (jnp.asarray(step, jnp.float32) - start) / (end - start)
  return jnp.clip(1.0 - frac, 0.0, 1.0)


def mar_mask_ratio(key, shape=(), minimum: float = 0.7, std: float = 0.25):
  """MAR's training mask ratio (Li et al. 2024; LTH14/mar models/mar.py): a normal of mean 1 and
  standard deviation `std` truncated to [minimum, 1] (scipy's truncnorm((minimum - 1) / std, 0,
  loc=1, scale=std)), float32 `shape`. MAR draws one ratio per batch and masks
  ceil(N * ratio) tokens (`mar_num_masked`)."""
  if not (0.0 <= minimum < 1.0 and std > 0):
    raise ValueError(f"MAR mask ratio needs 0 <= minimum < 1 and std > 0, got minimum={minimum}, "
                     f"std={std}")
  return 1.0 + std * jax.random.truncated_normal(key, (minimum - 1.0) / std, 0.0, shape)


def mar_num_masked(ratio, num_tokens: int, xp=jnp):
  """ceil(N * ratio): the number of masked tokens for a mask ratio (MAR's random_masking)."""
  return xp.ceil(num_tokens * ratio).astype(xp.int32)


def cosine_masked_counts(n: int, k: int):
  """Tokens still masked after each of the k steps over n (MAR / Hi-MAR sample_tokens, HART's
  last-scale MaskGIT iterations): max(1, min(masked - 1, floor(n cos(pi/2 (t + 1) / k)))), 0
  after the last step."""
  masked, out = n, []
  for step in range(k):
    m = math.floor(n * math.cos(math.pi / 2.0 * (step + 1) / k))
    m = max(1, min(masked - 1, m))
    if step >= k - 1:
      m = 0
    out.append(m)
    masked = m
  return out
