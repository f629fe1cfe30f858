"""Continuous batching over a KV-cached raster model: S slots, one jitted step for all of them.

Every slot holds one image being generated and sits at its own cache position (`index`: the
number of tokens it has drawn, 0 ... N-1). One call of `Engine.step` advances every active slot
by one token:

  * a slot at index 0 was just (re)filled: it feeds its class token (the model's
    `decode_prefix`) and draws x_0; its stale cache entries beyond slot 0 are hidden by the
    causal mask, whose query offset is per row (arjax.kernels.masks), so resetting a slot is
    setting its index to 0;
  * a slot at index i > 0 feeds x_{i-1} at its own cache position (`decode_tokens` with
    per-row token indexes, arjax.nn.attention.write_cache) and draws x_i.

Both kinds share one compiled step: decode_prefix runs (for every row, see `_step_fn`) only when
a slot is being reset (`lax.cond`), then decode_tokens for every row; reset rows take the
prefix's distribution. The cache is updated in place (donated), never copied.

Randomness never depends on the batch: the draw of token i of image j of a request with seed s
uses key fold_in(fold_in(key(s), j), i), and sampling options (temperature, top-k, top-p,
guidance scale) are per row, so a request gets the same tokens alone or batched with others.
Classifier-free guidance (when the model was trained with class dropout) doubles the rows:
row s is slot s's class, row S + s its null class; the guidance schedule of the run's config
(`eval.cfg_schedule`) is applied per row.

Categorical heads only (the per-row filtering below re-implements arjax.heads.categorical's
`process_logits` with per-row options; tests/serve/test_engine.py checks it row by row).

Legend: S slots, R rows (2S with guidance, else S), N tokens per image, V vocabulary.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from arjax.core.functional import FunctionalModel
from arjax.heads.base import split_halves
from arjax.sampling.decode import SequentialSampler
from arjax.sampling.guidance_schedule import GuidanceSchedule

# Columns of the per-slot integer and float inputs of one step (host -> device, one array each).
PREV, INDEX, LABEL, SEED, IMAGE, TOP_K, ACTIVE = range(7)
NUM_INTS = 7
TEMPERATURE, TOP_P, CFG = range(3)
NUM_FLOATS = 3
MAX_SEED = 2 ** 31 - 1  # seeds travel as int32.


def cannot_serve(model) -> Optional[str]:
  """None when the server can run `model`, else why not."""
  reason = SequentialSampler.cannot_run(model)
  if reason is not None:
    return reason
  if getattr(model.head, "sample_options", ()) != ("top_k", "top_p") or \
      not jnp.issubdtype(model.head.token_dtype, jnp.integer):
    return (f"its head {type(model.head).__name__} is not categorical (the server filters "
            "logits per row)")
  if int(model.tokenizer.tokens_per_image) < 2:
    return "it generates fewer than 2 tokens per image"
  return None


def process_rows(logits, temperature, top_k, top_p):
  """arjax.heads.categorical.process_logits with per-row options.

  logits [S, V]; temperature float32 [S]; top_k int32 [S] (0 or >= V: off); top_p float32 [S]
  (1: off). Temperature first, then top-k, then top-p, as the head does.
  """
  logits = logits.astype(jnp.float32)
  t = temperature[:, None]
  logits = jnp.where(t != 1.0, logits / jnp.maximum(t, 1e-6), logits)
  neg = jnp.finfo(jnp.float32).min
  v = logits.shape[-1]
  k = top_k[:, None]
  desc = jnp.sort(logits, axis=-1)[..., ::-1]
  kth = jnp.take_along_axis(desc, jnp.clip(k - 1, 0, v - 1), axis=-1)
  logits = jnp.where((k > 0) & (k < v) & (logits < kth), neg, logits)
  p = top_p[:, None]
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  cum = jnp.cumsum(probs, axis=-1)
  keep = (cum - probs) < p  # the smallest prefix whose mass reaches top_p (first always kept).
  cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where((p < 1.0) & (logits < cutoff), neg, logits)


def sample_rows(logits, keys, temperature, top_k, top_p):
  """Draws int32 [S] from logits [S, V], one key per row; temperature 0: the row's argmax
  (of the raw logits, as the head's greedy rule)."""
  processed = process_rows(logits, temperature, top_k, top_p)
  drawn = jax.vmap(lambda k, l: jax.random.categorical(k, l, axis=-1))(keys, processed)
  greedy = jnp.argmax(logits, axis=-1)
  return jnp.where(temperature == 0.0, greedy, drawn).astype(jnp.int32)


def row_keys(seed, image, index):
  """int32 [S] each -> one key per row: fold_in(fold_in(key(seed), image), index)."""
  return jax.vmap(lambda s, j, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), j),
                                                     i))(seed, image, index)


def row_scales(schedule: GuidanceSchedule, scale, index, n: int):
  """Per-row guidance scale at the token each row draws: `schedule`'s kind with each row's own
  scale (float32 [S]); progress index / N (by='tokens') or index / (N - 1) (by='steps')."""
  if schedule.kind == "constant":
    return scale
  # at(p) = 1 + (s - 1) w(p) for the other kinds; w(p) read off a unit-excess schedule.
  unit = GuidanceSchedule(schedule.kind, 2.0, schedule.power, schedule.by)
  progress = schedule.progress(index, n, index, n)
  return 1.0 + (scale - 1.0) * (unit.at(progress) - 1.0)


def _where_rows(rows, new, old, axis: int):
  """rows bool [R] -> new where rows (along `axis`), else old."""
  shape = [1] * new.ndim
  shape[axis] = rows.shape[0]
  return jnp.where(rows.reshape(shape), new, old)


class Engine:
  """The device side of the server: S slots' KV caches and one jitted decode step.

      engine = Engine(fm, variables, config, slots=8)
      tokens = engine.step(ints, floats)   # ints int32 [S, 7], floats float32 [S, 3] -> int32 [S]

  `ints` columns: PREV (the slot's last token, ignored at index 0), INDEX, LABEL, SEED, IMAGE
  (image number within its request), TOP_K, ACTIVE (0/1); `floats`: TEMPERATURE, TOP_P, CFG.
  Inactive rows compute and are ignored. The caches stay on the device between steps (donated).
  """

  def __init__(self, fm: FunctionalModel, variables, config, slots: int):
    if slots < 1:
      raise ValueError(f"slots={slots}; expected >= 1")
    model = fm.bind(fm.abstract_params)
    reason = cannot_serve(model)
    if reason is not None:
      raise ValueError(f"model {type(model).__name__} (order "
                       f"{getattr(model.order, 'name', None)!r}) cannot be served: {reason}")
    self.fm, self.variables, self.config = fm, variables, config
    self.slots = int(slots)
    self.num_tokens = int(model.tokenizer.tokens_per_image)
    self.vocab_size = int(model.head.vocab_size)
    self.num_classes = int(model.num_classes)
    self.null_class = int(model.null_class)
    # Guidance needs a trained null class: only a model trained with class dropout has one.
    self.guidance = float(getattr(model, "class_dropout", 0.0)) > 0
    self.rows = 2 * self.slots if self.guidance else self.slots
    from arjax.sampling.guidance_schedule import from_config
    self.schedule = from_config(config, 2.0)
    # The caches live where the step's outputs do (replicated over the variables' mesh), so
    # the first step and every later one see the same input sharding (one compile).
    leaf = jax.tree.leaves(variables)[0]
    mesh = getattr(leaf.sharding, "mesh", None)
    out = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None
           else None)
    self._init = jax.jit(lambda p: fm.bind(p).init_cache(self.rows), out_shardings=out)
    self.caches = self._init(variables)
    self._step = jax.jit(self._step_fn, donate_argnums=(1,))
    self.steps = 0  # decode steps run so far (forward passes of the batch).

  def empty_inputs(self):
    """Zeroed slot tables (every slot inactive): ints int32 [S, 7], floats float32 [S, 3]."""
    floats = np.zeros((self.slots, NUM_FLOATS), np.float32)
    floats[:, TEMPERATURE] = 1.0
    floats[:, TOP_P] = 1.0
    floats[:, CFG] = 1.0
    return np.zeros((self.slots, NUM_INTS), np.int32), floats

  def _step_fn(self, variables, caches, ints, floats):
    model = self.fm.bind(variables)
    n = self.num_tokens
    prev, index, label = ints[:, PREV], ints[:, INDEX], ints[:, LABEL]
    active = ints[:, ACTIVE] > 0
    double = (lambda x: jnp.concatenate([x, x])) if self.guidance else (lambda x: x)
    feed_labels = (jnp.concatenate([label, jnp.full_like(label, self.null_class)])
                   if self.guidance else label)
    reset = double(active & (index == 0))

    # A reset row feeds its class token (the prefix). decode_prefix writes the prefix slot of
    # every row, so every other row rewrites its own class token there: the same label through
    # the same computation, so the same keys and values as when that row was reset (rows are
    # independent). Writing every row in place avoids keeping the old cache for a per-row
    # merge, which would cost a copy of the whole cache at each step.
    def prefix(caches):
      return model.decode_prefix(feed_labels, caches)

    def no_prefix(caches):
      shapes = jax.eval_shape(prefix, caches)[0]
      return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), caches

    pdist, caches = jax.lax.cond(reset.any(), prefix, no_prefix, caches)
    # Rows at index 0 need no token; clipping keeps their (discarded) write inside the cache,
    # at a slot their next step overwrites before reading it.
    feed_index = jnp.clip(index - 1, 0, n - 2)
    dist, caches = model.decode_tokens(double(prev)[:, None], double(feed_index), caches)
    dist = jax.tree.map(lambda a, b: _where_rows(reset, a, b, 0), pdist, dist)
    if self.guidance:
      cond, uncond = split_halves(dist)
      scale = row_scales(self.schedule, floats[:, CFG], index, n)
      guided = cond.guide(uncond, scale)
      # Scale 1 is no guidance: the conditional logits exactly.
      dist = jax.tree.map(lambda g, c: _where_rows(scale == 1.0, c, g, 0), guided, cond)
    logits = dist.logits[:, 0]                                                    # [S, V]
    keys = row_keys(ints[:, SEED], ints[:, IMAGE], index)
    tokens = sample_rows(logits, keys, floats[:, TEMPERATURE], ints[:, TOP_K], floats[:, TOP_P])
    return tokens, caches

  def step(self, ints: np.ndarray, floats: np.ndarray) -> np.ndarray:
    """One decode step of every slot (see the class docstring) -> the drawn tokens int32 [S]."""
    tokens, self.caches = self._step(self.variables, self.caches, ints, floats)
    self.steps += 1
    return np.asarray(tokens)

  def warmup(self):
    """Compiles the step (with and without a reset row) and the image decoding; the slots are
    left empty."""
    ints, floats = self.empty_inputs()
    self.step(ints, floats)
    ints[0, ACTIVE] = 1
    self.step(ints, floats)
    self.caches = self._init(self.variables)
    self.steps = 0
    self.decode_images(np.zeros((1, self.num_tokens), np.int32))

  def decode_images(self, tokens: np.ndarray) -> np.ndarray:
    """int32 [K, N] -> uint8 images [K, H, W, C] through the model's tokenizer (one compiled
    shape: images are decoded one at a time)."""
    if not hasattr(self, "_decode"):
      self._decode = jax.jit(lambda p, t: self.fm.bind(p).tokenizer.decode(t))
    return np.concatenate([np.asarray(self._decode(self.variables, t[None]))
                           for t in np.asarray(tokens, np.int32)])
