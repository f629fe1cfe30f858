"""'next_scale': KV-cached next-scale sampling (VAR, Tian et al. 2024; autoregressive_infer_cfg of
the released code).

K passes for K scales. Pass k feeds the h_k^2 inputs of scale k (the class and start position at
k = 0; Linear(area(f_hat, h_k)) after), which attend to the KV cache of scales < k (the order's
decode mask: all of them, or scale k-1 only with the Markovian mask), and draws the scale's h_k^2
tokens in parallel through the shared `Sampler.reveal_step` (guidance, the head's top-k / top-p,
the order's reveal rule: the whole scale). The drawn code map then updates the running
reconstruction through the tokenizer's quantizer,

  f_hat += phi_k(bicubic(e[tokens_k], H))           (no resize at the last scale)

and area(f_hat, h_{k+1}) is the next pass's input; the final f_hat is what the tokenizer's
decoder turns into pixels (`sample_images`, `Sampler.sample_images`).

Zero-shot editing (VAR's inpainting, outpainting and class-conditional editing; the released
demo_zero_shot_edit): `known` marks the cells to keep and `given` holds the multi-scale tokens
of the image being edited (the tokenizer's encoding). After each scale is drawn, its kept cells
take the given tokens, so the running f_hat, and with it every later scale's input, is built from
them. A mask on the final grid [H, W] becomes per-scale masks by VAR's rule (`edit_masks`).

VAR's guidance ramp: logits = (1 + t) l_c - t l_u with t = cfg k / (K - 1). That is the 'linear'
guidance schedule by steps with scale s = 1 + cfg (configs/imagenet256/var.py sets
eval.cfg_schedule='linear', eval.cfg_by='steps'; eval.cfg_scale = 1 + VAR's cfg).

The K passes have K different query counts, so the loop over scales is unrolled inside one jit
(K compiled pieces, no padding to the largest scale). The cache holds N slots per row; under
guidance the batch is doubled (conditional rows first).

Two model hooks generalise the loop. A model with `flexible_scales` (FlexVAR,
arjax.models.flexvar) samples at any list `scales=` it accepts: the list's order, a cache of its N
slots, and the model's `sample_update` (non-residual: the next input is bicubic(e[q_k], s_{k+1})).
A model with `refine_schedule` (HMAR, arjax.models.hmar) refines a scale in place after drawing
it: the lowest-probability cells are masked again and redrawn by its refinement branch
(`_refine`), as many steps as the scale's schedule has counts.

A model with `continuous_scales` (FlowAR, arjax.models.flowar) takes the continuous path
(`_sample_continuous`): the same KV-cached pass per scale gives the scale's semantics, the
model's per-scale flow head integrates the scale's ODE (Euler / Heun, CFG on the velocity), and
the drawn map, upsampled by the model (`next_input`), is the next pass's input; its tokens are
the final scale's latent (the first output of `sample_with_fhat`; the second: every scale).

FlexVAR's released sampler (autoregressive_infer_cfg) also has a per-side rule, the model's
`sampling_rule(s)`: a side above `model.max_pn` (16) is guided at the full scale (t = cfg, not
the ramp) and drawn top-1 (the argmax of the guided logits); a side not among
`model.sampled_sides` (the released list 1..6, 8, 10, 13, 16, 23, 24, 32) is drawn top-1 at
the ramp's t.

A model with a continuous residual (HART, arjax.models.hart: `residual_dist`) adds, after the K
scales, its residual head's sample on the last scale's grid, conditioned on that scale's hidden
states (`decode_scale_hidden`) and drawn tokens, guided on eps: f = f_hat_discrete + residual.

HART's MaskGIT iterations on the last scale (`num_maskgit_iters` > 1; `last_scale_reveal_steps`,
a random order per row from fold_in(rng, MASKGIT_KEY), HART's cosine schedule): in HART the
last scale's inputs are area(f_hat_{<K}) whatever the iterations draw, and iteration t feeds its
cells against a KV cache holding the scales before K and the cells of iterations < t, so every
cell's hidden state depends only on which cells came at or before its iteration. The sampler
therefore runs the last scale as one pass under that block-causal mask (a cell of iteration t
sees the earlier scales and the cells of iterations <= t) and draws all its cells at once: the
same hidden states as HART's loop (tests/models/test_hart.py checks it against the literal
loop), each cell drawn from its own logits.

Legend: B batch, N tokens, K scales, H/W latent grid, Dv code dim, s side of a scale.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arjax.core.functional import FunctionalModel
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState

MASKGIT_KEY = 3_000_000  # fold_in(rng, .) gives HART's random MaskGIT order of the last scale.


def _source_weights(n_out: int, n_in: int):
  """Indices i0, i1 int [n_out] and weights l0, l1 float32 [n_out] of 1-D linear interpolation
  with align_corners=False and no antialiasing, rounded as PyTorch's CPU kernel rounds them
  (scale = n_in / n_out in float32; src = max(scale (i + 0.5) - 0.5, 0) with one rounding, a
  fused multiply-add; l1 = src - floor(src))."""
  scale = np.float32(n_in) / np.float32(n_out)
  half = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  i0 = src.astype(np.int64)
  i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
  l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
  return i0, i1, np.float32(1) - l1, l1


def edit_masks(mask, scales: Sequence[int]) -> np.ndarray:
  """VAR's per-scale keep masks: bool [..., H, W] (True = keep the edited image's token) ->
  bool [..., N], N = sum s^2, scale 1 first, each map row-major. Scale s keeps a cell where the
  bilinear resize of the mask to s x s (F.interpolate, align_corners=False) exceeds 0.5; scales
  of at most 3 cells keep every cell (the edited image's coarsest layout, as in VAR's demo).
  Computed in float32 in PyTorch's order of operations, so cells at 0.5 in exact arithmetic
  are decided by its rounding, as in the released code (tests/sampling/fixtures)."""
  m = np.asarray(mask).astype(np.float32)
  h, w = m.shape[-2:]
  out = []
  for s in scales:
    r0, r1, a0, a1 = _source_weights(s, h)
    c0, c1, b0, b1 = _source_weights(s, w)
    a0, a1 = a0[:, None], a1[:, None]
    x = lambda r, c: m[..., r, :][..., :, c]                                  # [..., s, s]
    v = ((x(r0, c0) * (a0 * b0) + x(r0, c1) * (a0 * b1)) + x(r1, c0) * (a1 * b0)) \
        + x(r1, c1) * (a1 * b1)
    keep = v > np.float32(0.5)
    if s * s <= 3:
      keep = np.ones_like(keep)
    out.append(keep.reshape(keep.shape[:-2] + (s * s,)))
  return np.concatenate(out, -1)


@SAMPLERS.register("next_scale")
class NextScaleSampler(Sampler):
  """Samples class-conditional multi-scale tokens scale by scale (see the module docstring)."""

  name = "next_scale"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._sample, static_argnums=3)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "decode_scale"):
      return "it has no next-scale decoding (decode_scale)"
    return None

  def _sample(self, params, labels, rng, scales=None, known=None, given=None):
    """labels int32 [B] -> (tokens int32 [B, N], f_hat float32 [B, H, W, Dv]).
    scales (static): a list for a model with flexible scales (FlexVAR), whose `decode_scale`
    takes the list's order and whose `sample_update` gives the next pass's inputs.
    known bool [B, N], given int32 [B, N] (or None): zero-shot editing (module docstring)."""
    from arjax.tokenizers.resample import area_resize
    model = self.fm.bind(params)
    if getattr(model, "continuous_scales", False):
      return self._sample_continuous(model, labels, rng)
    flexible = getattr(model, "flexible_scales", False)
    order = model.scale_order(scales) if flexible and scales is not None else model.order
    vq = model.scale_quantizer()
    codebook = jax.lax.stop_gradient(vq.codebook[...])
    b, n = labels.shape[0], order.num_tokens
    g = self.guidance
    feed = g.feed_labels(labels, model.null_class)
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    cache = model.init_cache(feed.shape[0], num_tokens=n)
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=cache)
    grid = order.grid
    f_hat = jnp.zeros((b,) + tuple(grid) + (vq.code_dim,), jnp.float32)
    inputs = None
    num_steps = order.num_steps()
    schedule = (model.refine_schedule(order) if hasattr(model, "refine_schedule") else None)
    hybrid, last = hasattr(model, "residual_dist"), len(order.scales) - 1
    for k, s in enumerate(order.scales):
      a, e = order.bounds[k]
      if hybrid and k == last:  # the hidden states the residual head reads (HART)
        steps = (model.last_scale_reveal_steps(jax.random.fold_in(rng, MASKGIT_KEY), b)
                 if hasattr(model, "last_scale_reveal_steps") else None)
        extra = {} if steps is None else {"reveal_steps": g.double(steps)}
        dist, cache, hidden = model.decode_scale_hidden(k, inputs, feed, state.cache, **extra)
      else:
        dist, cache = model.decode_scale(k, inputs, feed, state.cache, order=order)
      to_grid = lambda x, a=a: jax.lax.dynamic_update_slice_in_dim(
          jnp.zeros((b, n) + x.shape[2:], x.dtype), x, a, axis=1)
      counts = schedule[k] if schedule is not None else (s * s,)
      if len(counts) > 1:  # the guided prediction, to rank the drawn cells (HMAR)
        guided = g.guide(dist, g.progress(state.known.sum(1), n, state.step, num_steps))
      # FlexVAR's released rule (`sampling_rule`): some sides draw top-1, above max_pn at the
      # full guidance scale.
      greedy, full = model.sampling_rule(s) if flexible else (False, False)
      state = self.reveal_step(state.replace(cache=cache), dist, order, plan, num_steps,
                               to_grid=to_grid, greedy=greedy,
                               progress=jnp.ones((b,), jnp.float32) if full else None)
      state = state.replace(position=state.position + (e - a))
      if len(counts) > 1:
        cells = self._refine(model, k, inputs[:b], state.tokens[:, a:e], guided, counts, labels,
                             jax.random.fold_in(state.key, 1_000_000 + k))
        state = state.replace(tokens=state.tokens.at[:, a:e].set(cells))
      if known is not None:  # kept cells take the edited image's tokens
        state = state.replace(tokens=jnp.where(known, given, state.tokens))
      idx = state.tokens[:, a:e].reshape(b, s, s)
      if flexible:  # non-residual: the next input is this scale's codes, upsampled.
        f_hat, nxt_inputs = model.sample_update(vq, order, k, idx, f_hat)
        inputs = None if nxt_inputs is None else g.double(nxt_inputs)
        continue
      f_hat = f_hat + jax.lax.stop_gradient(vq._upsample(k, jnp.take(codebook, idx, axis=0)))
      if k + 1 < len(order.scales):
        nxt = order.scales[k + 1]
        inputs = g.double(area_resize(f_hat, nxt).reshape(b, nxt * nxt, vq.code_dim))
    if hybrid:
      f_hat = f_hat + self._residual(model, hidden, state, order, num_steps)
    return state.tokens, f_hat

  def _sample_continuous(self, model, labels, rng):
    """The continuous path (FlowAR, arjax.models.flowar): labels int32 [B] -> (the final scale's
    latent tokens float32 [B, H*W, Ct], every scale float32 [B, N, Ct]). Pass k: shat_k from
    one KV-cached AR pass (doubled batch under guidance), then scale k's ODE from
    temperature * F0 (key fold_in(rng, k)) with the head's solver and steps, CFG on the
    velocity v_u + w (v_c - v_u) (w from the guidance schedule at step k of K); the drawn map,
    upsampled (`model.next_input`), is pass k + 1's input."""
    from arjax.heads.flow import integrate
    order, g, f = model.order, self.guidance, model.flow
    b, n, c = labels.shape[0], order.num_tokens, model.channels
    feed = g.feed_labels(labels, model.null_class)
    cache = model.init_cache(feed.shape[0], num_tokens=n)
    inputs, maps = None, []
    for k, s in enumerate(order.scales):
      shat, cache = model.decode_scale(k, inputs, feed, cache, order=order)
      w = g.at(g.progress(order.bounds[k][0], n, k, len(order.scales)))

      def velocity(x, t, shat=shat, w=w):
        v = model.scale_velocity(g.double(x), t, shat)
        return v if not g.enabled else v[b:] + w * (v[:b] - v[b:])

      x0 = self.sampling.temperature * jax.random.normal(jax.random.fold_in(rng, k),
                                                         (b, s * s, c), jnp.float32)
      x = integrate(velocity, x0, f.num_sampling_steps, f.solver)
      maps.append(x)
      if k + 1 < len(order.scales):
        inputs = g.double(model.next_input(x, k))
    return maps[-1], jnp.concatenate(maps, 1)

  def _residual(self, model, hidden, state, order, num_steps):
    """HART's continuous residual [B, s, s, Dv] of the last scale: the residual head's DDPM
    sample conditioned on the last scale's hidden states [B (2B under CFG), s^2, C] and its
    drawn tokens, guided on eps at the last scale's guidance scale (the progress of its step)."""
    b, s = state.tokens.shape[0], order.scales[-1]
    g = self.guidance
    a, e = order.bounds[-1]
    rdist = model.residual_dist(hidden, g.double(state.tokens[:, a:e]))
    progress = g.progress(state.known.sum(1) - (e - a), order.num_tokens, state.step - 1,
                          num_steps)
    guided = g.guide(rdist, progress)
    r = guided.sample(jax.random.fold_in(state.key, 2_000_000),
                      temperature=self.sampling.temperature)
    return r.reshape(b, s, s, -1)

  def _refine(self, model, k: int, ns_inputs, cells, guided, counts, labels, key):
    """In-scale masked refinement of scale k (HMAR): cells int32 [B, L] drawn from `guided`
    (the doubled-batch prediction's guided form, conditional rows first); counts: the scale's
    schedule. After step j the sum(counts[j+1:]) cells of lowest probability are masked and
    redrawn by the model's refinement branch (unguided: conditional rows only)."""
    b, l = cells.shape
    rows = jnp.arange(b)[:, None]
    s = int(round(l ** 0.5))

    def lowest(logits, cells, among, num):
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1),
                                 cells[..., None], -1)[..., 0]
      logp = jnp.where(among, logp, jnp.inf)
      pick = jnp.argsort(logp, axis=1)[:, :num]
      return jnp.zeros((b, l), bool).at[rows, pick].set(True)

    masked = lowest(guided.logits[:b], cells, jnp.ones((b, l), bool), sum(counts[1:]))
    for j in range(1, len(counts)):
      dist = model.refine_scale(k, ns_inputs, cells.reshape(b, s, s), masked, labels)
      cells = jnp.where(masked, self.draw(dist, jax.random.fold_in(key, j)), cells)
      if j + 1 < len(counts):
        masked = lowest(dist.logits, cells, masked, sum(counts[j + 1:]))
    return cells

  def check_scales(self, scales: Sequence[int]):
    """A requested scale list must be the model's: VAR's position table and level embeddings
    are fixed by its training scales (FlexVAR's are not)."""
    from arjax.orders.scales import check_scales
    model = self.fm.bind(self.fm.abstract_params)
    if getattr(model, "flexible_scales", False):
      return model.check_sampling_scales(scales)
    have = tuple(model.scales)
    scales = check_scales(scales, "sampling scales", grid=have[-1], max_tokens=model.num_tokens)
    if scales != have:
      raise ValueError(f"sampling scales={list(scales)}: model 'var' can only sample at its "
                       f"training scales {list(have)} (fixed position table of "
                       f"{sum(s * s for s in have)} slots and {len(have)} level embeddings)")

  def edit_inputs(self, labels, known, given):
    """The editing arguments as the compiled loop takes them: known bool [B, N] (a final-grid
    mask [H, W] / [B, H, W] becomes per-scale masks, `edit_masks`) and given int32 [B, N]; neither
    given -> (None, None). ValueError naming the argument otherwise."""
    from arjax.orders.base import check_known
    model = self.fm.bind(self.fm.abstract_params)
    b, n, scales = labels.shape[0], model.num_tokens, tuple(model.scales)
    if known is None and given is None:
      return None, None
    if known is None or given is None:
      missing = "given" if given is None else "known"
      raise ValueError(f"sampler 'next_scale': editing needs both `known` (cells to keep) and "
                       f"`given` (the edited image's tokens [B, {n}]); `{missing}` is missing")
    known = np.asarray(known)
    if known.ndim in (2, 3) and known.shape[-2:] == (scales[-1], scales[-1]):
      known = edit_masks(known, scales)
    known = check_known(known, b, n)
    given = jnp.asarray(given)
    if given.shape != (b, n) or not jnp.issubdtype(given.dtype, jnp.integer):
      raise ValueError(f"sampler 'next_scale': given must be the edited image's multi-scale "
                       f"tokens, integer [{b}, {n}]; got {given.dtype}{list(given.shape)}")
    vocab = model.tokenizer.vocab_size
    if int(given.min()) < 0 or int(given.max()) >= vocab:
      raise ValueError(f"sampler 'next_scale': given tokens must be in [0, {vocab}); got "
                       f"[{int(given.min())}, {int(given.max())}]")
    return known, given.astype(jnp.int32)

  def sample_with_fhat(self, params, labels, rng, scales: Optional[Sequence[int]] = None,
                       known=None, given=None):
    """labels int32 [B] -> (tokens int32 [B, N], final f_hat [B, H, W, Dv]). known / given:
    zero-shot editing (module docstring)."""
    if scales is not None:
      if known is not None or given is not None:
        raise ValueError(f"sampler 'next_scale': editing (known / given) runs at the model's "
                         f"training scales; got scales={list(scales)}")
      scales = self.check_scales(scales)  # a tuple for a flexible model, else None
    labels = jnp.asarray(labels, jnp.int32)
    if getattr(self.fm.bind(self.fm.abstract_params), "continuous_scales", False):
      from arjax.heads.diffusion import check_temperature
      check_temperature("spatial_flow", self.sampling.temperature)
      if known is not None or given is not None:
        raise ValueError("sampler 'next_scale': editing (known / given) is for discrete scale "
                         "tokens; the continuous path (FlowAR) does not take it")
      return self._run(params, labels, rng, None, None, None)
    known, given = self.edit_inputs(labels, known, given)
    return self._run(params, labels, rng, scales, known, given)

  def sample_tokens(self, params, labels, rng, known=None, given=None, scales=None):
    """labels int32 [B] -> tokens int32 [B, N] (scales concatenated, scale 1 first). known bool
    [N] / [B, N] / [H, W] / [B, H, W] and given int [B, N]: keep those cells of the edited image
    (inpainting, outpainting, class-conditional editing; module docstring)."""
    return self.sample_with_fhat(params, labels, rng, scales, known=known, given=given)[0]

  def sample_images(self, params, labels, rng, known=None, given=None, scales=None):
    """-> uint8 images [B, H', W', C] (`images_of` the sampled tokens and final f_hat)."""
    tokens, f_hat = self.sample_with_fhat(params, labels, rng, scales, known=known, given=given)
    return self.images_of(params, tokens, f_hat, scales)

  def images_of(self, params, tokens, f_hat, scales=None):
    """uint8 images of one `sample_with_fhat` result. A model with a continuous residual (HART)
    decodes its f_hat_discrete + residual (`decode_fhat`). At a list of a flexible model
    (FlexVAR) the final f_hat, of side S = the list's last side (which may exceed the tokenizer
    grid G), goes through the tokenizer's decoder: [B, S F, S F, C], F = image side / G
    (arjax.models.flexvar `decode_latent`). The others decode their tokens."""
    model = self.fm.bind(params)
    if hasattr(model, "decode_fhat"):
      return model.decode_fhat(f_hat)
    if scales is not None:
      from arjax.models.flexvar import decode_latent
      return decode_latent(model.tokenizer, f_hat)
    return model.tokenizer.decode(tokens)
