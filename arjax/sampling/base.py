"""Samplers by name over one state, with guidance as one wrapper and the order's reveal rule.

    sampler = build_sampler(fm, SamplingConfig(cfg_scale=2.0), config)   # config.sampling.name
    tokens = sampler.sample_tokens(params, labels, key)                   # [B, N, *T]

Every sampler is registered in `SAMPLERS` and shares `Sampler.reveal_step`, the one step of
every loop: combine the doubled-batch distribution with the guidance schedule (`Distribution.
guide`), draw with fold_in(key, step) and the head's options, ask the order which cells the step
reveals (`Order.reveal_cells`) and write them into the state's token buffer, whose dtype and trailing
shape come from the head (`token_dtype`, `token_shape`). Samplers differ only in how they get
the step's distribution from the model:

  sequential     KV-cached next-cell decoding (decode_prefix / decode_tokens): raster orders.
  order          recomputes the whole layout at each step (grid_dist): any order, inpainting.
  cached_groups  KV-cached parallel groups from target queries (ARPG: predict_group).
  cached_order   KV-cached slots of a fixed-group order's layout (RandAR, LPD, PAR, NAR).

`build_sampler` takes the name from the SamplingConfig, else config.sampling.name, else the
model's `default_sampler()`; a sampler that cannot run the model says which samplers can.

Legend: B batch, N tokens, T the head's token shape.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.checks import check_array, check_key
from arjax.core.functional import FunctionalModel
from arjax.registry import Registry
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule, from_config
from arjax.sampling.state import SamplerState, where_cells

SAMPLERS: Registry = Registry("sampler")


def runnable_samplers(model):
  return [n for n in SAMPLERS.names() if SAMPLERS.get(n).cannot_run(model) is None]


class Sampler:
  """Base class of the registered samplers (see the module docstring)."""

  name = "sampler"
  # The speculative options (SamplingConfig.window, gsd_radius, gsd_tol, max_tries) it takes;
  # one set away from its default for a sampler not taking it is refused by name.
  speculative_options: tuple = ()

  def __init_subclass__(cls, **kwargs):
    # Every sampler's own sample_tokens checks its inputs first (check_inputs), so a wrong
    # shape is one line naming the argument, not an error deep inside the traced loop.
    super().__init_subclass__(**kwargs)
    own = cls.__dict__.get("sample_tokens")
    if own is None or getattr(own, "checks_inputs", False):
      return

    @functools.wraps(own)
    def sample_tokens(self, params, labels, rng, known=None, given=None, **more):
      self.check_inputs(labels, rng, known, given)
      return own(self, params, labels, rng, known=known, given=given, **more)

    sample_tokens.checks_inputs = True
    cls.sample_tokens = sample_tokens

  def check_inputs(self, labels, rng, known=None, given=None) -> None:
    """chex checks of sample_tokens' arguments (static shapes and dtypes: free under jit):
    labels an integer [B], rng one PRNG key, known a bool mask ([N], [B, N], [H, W] or
    [B, H, W]; its sizes are checked by the order, `check_known`), given tokens [B, ...].
    ValueError naming the argument otherwise."""
    where = f"sampler {self.name!r} sample_tokens"
    check_array(labels, "labels", where, rank=1, kind="int", legend=" (B class labels)")
    check_key(rng, "rng", where)
    b = labels.shape[0]
    if known is not None:
      check_array(known, "known", where, kind="bool",
                  shape=(...,), legend=" (the inpainting mask)")
      if known.ndim not in (1, 2, 3):
        raise ValueError(f"{where}: known must be a bool mask [N], [B, N], [H, W] or [B, H, W], "
                         f"got {list(known.shape)}")
    if given is not None:
      check_array(given, "given", where, shape=(b, ...),
                  legend=f" (B={b} as labels: the inpainting tokens [B, N, *T] or [B, H, W, *T])")

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    sampling.validate()
    self.fm, self.sampling = fm, sampling
    self.guidance = guidance or GuidanceSchedule("constant", sampling.cfg_scale)
    model = fm.bind(fm.abstract_params)
    reason = self.cannot_run(model)
    if reason is not None:
      raise ValueError(f"sampler {self.name!r} cannot run model {type(model).__name__} with "
                       f"order {getattr(getattr(model, 'order', None), 'name', None)!r}: "
                       f"{reason}; samplers that can: {runnable_samplers(model)}")
    if self.guidance.by == "revealed" and not getattr(self, "counts_revealed", False):
      raise ValueError(f"eval.cfg_by='revealed' (MAR's linear CFG) is for the 'order' sampler; "
                       f"sampler {self.name!r} counts tokens before the step (cfg_by='tokens')")
    unused = [f for f in sampling.speculative_set() if f not in self.speculative_options]
    if unused:
      raise ValueError(f"sampling option(s) {unused} do not apply to sampler {self.name!r} "
                       "(window: 'sjd', 'mc_sjd', 'gsd', 'continuous_sjd'; gsd_radius, gsd_tol: "
                       "'gsd'; max_tries: 'continuous_sjd')")
    self.options = sampling.head_options()
    allowed = getattr(model.head, "sample_options", ())
    extra = sorted(set(self.options) - set(allowed))
    if extra:
      raise ValueError(f"sampling options {extra} do not apply to head "
                       f"{type(model.head).__name__} (it takes temperature"
                       + (f" and {list(allowed)})" if allowed else " only)"))

  @classmethod
  def cannot_run(cls, model) -> Optional[str]:
    """None when this sampler can run `model` (its protocol and order), else why not."""
    raise NotImplementedError

  @property
  def use_cfg(self) -> bool:
    return self.guidance.enabled

  # -- shared pieces of every loop ---------------------------------------------------------------
  def token_buffer(self, model, b: int, n: int):
    head = model.head
    return jnp.zeros((b, n) + tuple(head.token_shape), head.token_dtype)

  def draw(self, dist, key):
    return dist.sample(key, temperature=self.sampling.temperature, **self.options)

  def draw_cells(self, dist, key, cells, n: int):
    """Draws [B, G, *T] from dist [B, G] where prediction (b, g) is grid cell cells[b, g] of
    N = n: each with its own key fold_in(key, b * N + cell), so a cell's draw does not depend
    on which other cells a step predicts (a cached and a recomputing sampler of one order draw
    the same tokens from the same logits)."""
    b = cells.shape[0]
    idx = jnp.arange(b, dtype=jnp.int32)[:, None] * n + jnp.clip(cells, 0, n - 1)
    keys = jax.vmap(jax.vmap(lambda i: jax.random.fold_in(key, i)))(idx)

    def one(d, k):  # one prediction, as a [1, 1] Distribution.
      return self.draw(jax.tree.map(lambda x: x[None, None], d), k)[0, 0]

    return jax.vmap(jax.vmap(one))(dist, keys)

  def reveal_step(self, state: SamplerState, dist, order, plan, num_steps: int, *,
                  to_grid, num_unknown_start=None, cells=None, progress=None,
                  greedy: bool = False) -> SamplerState:
    """One sampling step: guide, draw, reveal, write. dist: the (doubled under CFG) prediction
    of the step; to_grid(x [B, L, ...]) -> [B, N, ...] places its positions on the grid;
    cells int32 [B, L]: their grid cells, to draw each with its own key (`draw_cells`).
    progress: the guidance schedule's progress to use instead of the step's (e.g. 1.0: the
    full scale); greedy: take the argmax of the guided distribution instead of drawing."""
    n = state.known.shape[1]
    if progress is None:
      progress = self.guidance.progress(state.known.sum(1), n, state.step, num_steps)
    guided = self.guidance.guide(dist, progress)
    key = jax.random.fold_in(state.key, state.step)
    if greedy:
      draw = guided.argmax().astype(state.tokens.dtype)
    else:
      draw = self.draw(guided, key) if cells is None else self.draw_cells(guided, key, cells, n)
    confidence = lambda: to_grid(guided.confidence(draw, temperature=self.sampling.temperature,
                                                   **self.options))
    reveal = order.reveal_cells(state.step, state.known, plan, key=jax.random.fold_in(key, 1),
                          confidence=confidence, num_unknown_start=num_unknown_start)
    return state.replace(tokens=where_cells(reveal, to_grid(draw), state.tokens),
                         known=state.known | reveal, step=state.step + 1)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    raise NotImplementedError

  def sample_images(self, params, labels, rng, **kw):
    """-> uint8 images [B, H, W, C] decoded by the model's tokenizer."""
    tokens = self.sample_tokens(params, labels, rng, **kw)
    return self.fm.bind(params).tokenizer.decode(tokens)


def build_sampler(fm: FunctionalModel, sampling: SamplingConfig, config=None,
                  guidance: Optional[GuidanceSchedule] = None) -> Sampler:
  """The sampler named by sampling.name, else config.sampling.name, else the model's default
  (`model.default_sampler()`). The guidance schedule comes from `guidance`, else from
  config.eval (cfg_schedule, cfg_power, cfg_by, cfg_steps_cap), else constant."""
  if guidance is None:
    guidance = (from_config(config, sampling.cfg_scale) if config is not None
                else GuidanceSchedule("constant", sampling.cfg_scale))
  name = sampling.name
  if name == "auto" and config is not None and "sampling" in config:
    name = config.sampling.get("name", "auto")
  if name == "auto":
    name = fm.bind(fm.abstract_params).default_sampler()
  where = "sampling.name" if sampling.name != "auto" else "config.sampling.name"
  return SAMPLERS.get(name, field=where)(fm, sampling, guidance)
