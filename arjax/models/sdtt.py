"""SDTT, self-distillation through time (Deschenaux & Gulcehre 2025, jdeschena/sdtt), for the
'mdlm' objective of `arjax.models.diffusion_lm`: the targets of one distillation step and the
divergences between them and the student.

From x_t (t ~ U[2 dt, 1]) the teacher takes two ancestral steps of size dt (t -> t - dt ->
t - 2 dt); the target of every position masked in x_t is the one-hot of the token the first
step revealed there, else the teacher's prediction at the second step; the student takes one
step of size 2 dt from x_t and is fitted to the target on the positions masked in x_t.

Divergences (`DIVERGENCES`), per position, target p, student q (q = softmax of the logits):
  kl-fwd   KL(p || q) = sum_v p(v) (log p(v) - log q(v))
  kl-bwd   KL(q || p) = sum_v q(v) (log q(v) - log p(v)), SDTT's default (the official
           `loss_type == 'kl-bwd'`: student_probs * (student_log - teacher_log)). The target's
           log is floored at log 1e-20 (the one-hot rows of revealed tokens are 0 elsewhere),
           so kl-bwd pushes q hard onto the revealed token there.

Legend: B batch, L sequence length, V vocabulary.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DIVERGENCES = ("kl-fwd", "kl-bwd")
LOG_FLOOR = 1e-20


def check_divergence(kind: str) -> str:
  if kind not in DIVERGENCES:
    raise ValueError(f"sdtt divergence={kind!r}; expected one of {DIVERGENCES}")
  return kind


def divergence(target, student_logits, kind: str = "kl-fwd"):
  """target probabilities [..., V], student logits [..., V] -> divergence [...] (nats)."""
  check_divergence(kind)
  log_p = jnp.log(jnp.maximum(target, LOG_FLOOR))
  log_q = jax.nn.log_softmax(student_logits, -1)
  if kind == "kl-fwd":
    return (target * (log_p - log_q)).sum(-1)
  return (jnp.exp(log_q) * (log_q - log_p)).sum(-1)


def sdtt_targets(teacher, x, key, dt: float):
  """teacher: a bound 'mdlm' DiffusionLM; x int32 [B, L] -> (x_t int32 [B, L], masked bool
  [B, L], target probabilities [B, L, V], gradient stopped)."""
  mask_id = teacher.mask_id
  k1, k2, k3 = jax.random.split(key, 3)
  b = x.shape[0]
  t = jax.random.uniform(k1, (b, 1), minval=2 * dt, maxval=1.0)
  xt = jnp.where(jax.random.uniform(k2, x.shape) < t, mask_id, x)
  masked = xt == mask_id
  p1 = jax.nn.softmax(teacher.mdlm_logits(xt), -1)
  ka, kb = jax.random.split(k3)
  draw = jax.random.categorical(ka, jnp.log(jnp.maximum(p1, LOG_FLOOR)))
  # The first step t -> t - dt reveals a masked token with probability dt / t.
  rev = masked & (jax.random.uniform(kb, x.shape) < dt / t)
  x1 = jnp.where(rev, draw, xt)
  p2 = jax.nn.softmax(teacher.mdlm_logits(x1), -1)
  tgt = jnp.where(rev[..., None], jax.nn.one_hot(draw, p1.shape[-1]), p2)
  return xt, masked, jax.lax.stop_gradient(tgt)


def sdtt_loss(student, xt, masked, target, kind: str = "kl-fwd"):
  """student: a bound 'mdlm' DiffusionLM -> the mean divergence over the masked positions."""
  d = divergence(target, student.mdlm_logits(xt), kind)
  return jnp.sum(jnp.where(masked, d, 0.0)) / jnp.maximum(masked.sum(), 1)
