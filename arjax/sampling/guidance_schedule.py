"""Guidance schedules: the classifier-free guidance scale as a function of sampling progress.

One wrapper for every sampler: a sampler feeds the model a doubled batch (`double`,
`feed_labels`: conditional half first, the null class second) and calls
`schedule.guide(dist, progress)` on the doubled-batch head Distribution; the schedule picks the
scale and the head combines the halves in its own way (`Distribution.guide`: logits for the
categorical head, GIVT's density rule for the GMM, inside the inner loop for iterative heads).
`combine(logits, progress)` is the same on raw logits. The scale:

  constant       s                                       (LlamaGen, ARPG's recommendation)
  linear         1 + (s - 1) p                           (MAR, RandAR 1 -> 4, LPD; MaskGIL:
                                                          (1 + w_t) l_c - w_t l_u, w_t = 3 t/(T-1)
                                                          is linear with s = 4, by='steps')
  power_cosine   1 + (s - 1) (1 - cos(pi p^power)) / 2   (RAR, Yu et al. 2024)

p is the fraction of tokens decoded before this step (`by='tokens'`: t/N for a sequential
sampler), the fraction decoded after it (`by='revealed'`: MAR's (N - mask_len) / N; the 'order'
sampler over order 'masked' with reveal='mar') or the step fraction t/(T-1) (`by='steps'`).

`steps_cap` C > 0 (by='steps' only): p = t / min(T - 1, C), NOT clipped above 1. FlexVAR's ramp
(jiaosiyu1999/FlexVAR models/flexvar.py autoregressive_infer_cfg: ratio = si / min(K - 1, 9),
t = cfg ratio): the ramp of a 10-step list, so a list of more than 10 steps reaches cfg at step 9
and keeps growing (13 steps: 12/9 cfg at the last). Its other rule (t = cfg for sides above
max_pn = 16, drawn greedily) is model 'flexvar's `sampling_rule`, applied by the 'next_scale'
sampler (progress 1: the full scale).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from arjax.heads.base import split_halves
from arjax.sampling.guidance import cfg_logits, double_labels

GUIDANCE_KINDS = ("constant", "linear", "power_cosine")


@dataclasses.dataclass(frozen=True)
class GuidanceSchedule:
  kind: str = "constant"
  scale: float = 1.0
  power: float = 1.0   # power_cosine exponent p.
  by: str = "tokens"   # progress: 'tokens' (fraction decoded before the step), 'revealed'
                       # (after it) or 'steps' (t / (T - 1)).
  steps_cap: int = 0   # by='steps': t / min(T - 1, steps_cap), unclipped (FlexVAR: 9); 0: off.

  def __post_init__(self):
    if self.kind not in GUIDANCE_KINDS:
      raise ValueError(f"guidance schedule kind={self.kind!r}; expected one of {GUIDANCE_KINDS}")
    if self.by not in ("tokens", "revealed", "steps"):
      raise ValueError(f"guidance schedule by={self.by!r}; expected 'tokens', 'revealed' or "
                       "'steps'")
    if self.power <= 0:
      raise ValueError(f"guidance schedule power={self.power}; expected > 0")
    if self.steps_cap < 0 or (self.steps_cap and self.by != "steps"):
      raise ValueError(f"guidance schedule steps_cap={self.steps_cap} (eval.cfg_steps_cap); "
                       f"expected 0, or > 0 with by='steps' (got by={self.by!r})")

  @property
  def enabled(self) -> bool:
    return self.scale != 1.0

  def at(self, progress):
    """Guidance scale at progress in [0, 1] (scalar or array)."""
    # Clipped to [0, 1], except above under steps_cap (FlexVAR's ramp passes 1).
    p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, None if self.steps_cap else 1.0)
    if self.kind == "constant":
      return jnp.full_like(p, self.scale)
    if self.kind == "linear":
      return 1.0 + (self.scale - 1.0) * p
    return 1.0 + (self.scale - 1.0) * (1.0 - jnp.cos(math.pi * p ** self.power)) / 2.0

  def progress(self, tokens_done, num_tokens, step, num_steps):
    if self.by in ("tokens", "revealed"):  # the caller counts before or after the step.
      return jnp.asarray(tokens_done, jnp.float32) / num_tokens
    denom = max(num_steps - 1, 1)
    if self.steps_cap:
      denom = min(denom, self.steps_cap)
    return jnp.asarray(step, jnp.float32) / denom

  def double(self, tree):
    """Arrays [B, ...] -> [2B, ...] (both halves equal) when guidance is on."""
    if not self.enabled:
      return tree
    return jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)

  def feed_labels(self, labels, null_class: int):
    """labels [B] -> [2B] (conditional, then the null class) when guidance is on."""
    return double_labels(labels, null_class) if self.enabled else labels

  def guide(self, dist, progress):
    """A head Distribution over the doubled batch [2B, ...] -> the guided one over [B, ...]."""
    if not self.enabled:
      return dist
    cond, uncond = split_halves(dist)
    return cond.guide(uncond, self.at(progress))

  def combine(self, logits, progress):
    """logits [2B, ..., V] (conditional half first), progress scalar or [B] -> [B, ..., V]."""
    s = self.at(progress)
    if s.ndim == 1:
      s = s.reshape(s.shape + (1,) * (logits.ndim - 1))
    return cfg_logits(logits, s)


def from_config(config, cfg_scale: float) -> GuidanceSchedule:
  """Reads eval.cfg_schedule / cfg_power / cfg_by / cfg_steps_cap when a config has them."""
  e = config.get("eval", {}) if hasattr(config, "get") else {}
  get = lambda k, d: e.get(k, d) if hasattr(e, "get") else d
  return GuidanceSchedule(kind=get("cfg_schedule", "constant"), scale=float(cfg_scale),
                          power=float(get("cfg_power", 1.0)), by=get("cfg_by", "tokens"),
                          steps_cap=int(get("cfg_steps_cap", 0)))
