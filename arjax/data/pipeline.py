"""Batched, sharded, deterministic, resumable input pipelines on grain.

Shapes: G global batch, P processes, b = G // P per-process batch, H/W height/width,
C channels. A batch is a dict of numpy arrays: "image" uint8 [b, H, W, C], "label" int32 [b]
(plus "mask" float32 [b] when drop_remainder=False, and any extra keys of the source).

The order is defined on the *global* stream of examples: epoch e is a permutation of the
split drawn from (seed, e) (a fresh one each epoch), epochs are concatenated, and global
batch t is positions [t*G, (t+1)*G) of that stream. Process i reads only positions
[t*G + i*b, t*G + (i+1)*b) -- over an epoch the processes' examples are disjoint and cover
the split -- so

  * the global batch does not depend on the number of processes or workers;
  * batch t is a pure function of t: the iterator state is just the next t, and a restored
    iterator repeats exactly the batches it would have produced;
  * with drop_remainder=False every process produces the same number of batches (the last
    one padded, with "mask" 0 on padding), so multi-host evaluation never waits on a
    process that ran out of data.

Batches are made whole: grain iterates over batch indices (`MapDataset.range`), optionally
in a background thread (`data.prefetch`) or worker processes (`data.worker_count`), and
each batch is one vectorised gather plus preprocessing, because per-example Python work
would cost more than a training step of the small CPU models.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Dict, List, Optional, Union

import ml_collections
import numpy as np

from arjax.data import preprocess
from arjax.data import sources

Batch = Dict[str, np.ndarray]
_STATE_VERSION = 1


def default_config() -> ml_collections.ConfigDict:
  """Data fields of an experiment config (config.data)."""
  c = ml_collections.ConfigDict()
  c.source = "mnist"      # 'mnist' | 'fashion_mnist' (bundled) | 'tfds:NAME' | 'array_record:PATH' | 'npz:PATH' | text: 'tinyshakespeare' | 'txt:PATH' | 'recall:OPTS' | 'treecall:OPTS'.
  c.seq_len = 256         # tokens per example L of text sources (arjax.data.text); image sources ignore it.
  c.pp = ""               # preprocessing ops joined by '|', e.g. "resize(16)|flip_lr" (arjax.data.preprocess).
  c.tfds_data_dir = ""    # data_dir for 'tfds:' sources ('' = the TFDS default).
  c.worker_count = 0      # grain worker processes (0 = in-process).
  c.prefetch = 0          # batches computed ahead in one background thread (0 = on demand).
  c.splits = ml_collections.ConfigDict({"train": "train", "test": "test"})  # source split read for each pipeline split, e.g. test='validation'.
  return c


# -- configuration ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Settings:
  source: str
  pp: str
  tfds_data_dir: str
  worker_count: int
  prefetch: int
  splits: Dict[str, str]
  seq_len: int


def _settings(cfg: ml_collections.ConfigDict) -> _Settings:
  """Checks config.data: unknown fields and wrong types fail naming the field."""
  defaults = default_config()
  given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"unknown config field(s) {['data.' + k for k in unknown]}; expected "
                     f"{sorted('data.' + k for k in defaults)}")
  values = defaults.to_dict()
  values.update(given)
  for key in ("source", "pp", "tfds_data_dir"):
    if not isinstance(values[key], str):
      raise ValueError(f"data.{key}={values[key]!r}; expected a string")
  for key in ("worker_count", "prefetch"):
    if not isinstance(values[key], int) or values[key] < 0:
      raise ValueError(f"data.{key}={values[key]!r}; expected an int >= 0")
  if not isinstance(values["seq_len"], int) or values["seq_len"] <= 0:
    raise ValueError(f"data.seq_len={values['seq_len']!r}; expected an int > 0")
  if not isinstance(values["splits"], dict):
    raise ValueError(f"data.splits={values['splits']!r}; expected a dict like "
                     "{'train': 'train', 'test': 'test'}")
  return _Settings(**values)


@dataclasses.dataclass(frozen=True)
class _Split:
  """One split of a source after the pp filters: example i of the split is source[ids[i]]."""
  source: Any
  ids: Optional[np.ndarray]   # None: every example, in source order.
  pp: preprocess.Preprocess
  name: str

  def __len__(self) -> int:
    return len(self.source) if self.ids is None else len(self.ids)


def _open_split(s: _Settings, split: str) -> _Split:
  pp = preprocess.parse(s.pp)
  source_split = s.splits.get(split, split)
  source = sources.open_source(s.source, source_split, s.tfds_data_dir, s.seq_len)
  ids = np.flatnonzero(pp.keep(source.labels())).astype(np.int64) if pp.filters else None
  out = _Split(source, ids, pp, split)
  if not len(out):
    why = f" after the filters in data.pp={s.pp!r}" if pp.filters else ""
    raise ValueError(f"split {split!r} of data.source={s.source!r} has no examples{why}")
  return out


# -- batches ---------------------------------------------------------------------------------
def _stack(examples: List[Batch], what: str) -> Batch:
  keys = sorted(examples[0])
  for e in examples:
    if sorted(e) != keys:
      raise ValueError(f"{what}: examples have different keys {keys} and {sorted(e)}")
  return {k: np.stack([e[k] for e in examples]) for k in keys}


def _assemble(raw: Union[Batch, List[Batch]], seeds: np.ndarray,
              pp: preprocess.Preprocess, what: str) -> Batch:
  """Preprocesses a read batch; records of different shapes are preprocessed one by one."""
  if isinstance(raw, dict):
    return pp(raw, seeds)
  shapes = {tuple((k, v.shape) for k, v in sorted(e.items())) for e in raw}
  if len(shapes) == 1:
    return pp(_stack(raw, what), seeds)
  done = [pp({k: v[None] for k, v in e.items()}, seeds[j:j + 1]) for j, e in enumerate(raw)]
  shapes = {tuple((k, v.shape[1:]) for k, v in sorted(e.items())) for e in done}
  if len(shapes) > 1:
    raise ValueError(f"{what}: examples of different shapes after data.pp={pp.spec!r}: "
                     f"{sorted(shapes)[:3]}; add e.g. resize(SIZE) to data.pp")
  return {k: np.concatenate([e[k] for e in done]) for k in done[0]}


class _BatchLoader:
  """step -> this process's part of global batch `step` (a picklable grain map function)."""

  def __init__(self, split: _Split, *, seed: int, shuffle: bool, global_batch_size: int,
               process_index: int, process_count: int, total: Optional[int], masked: bool):
    self.split, self.seed, self.shuffle, self.total, self.masked = (
        split, seed, shuffle, total, masked)
    self.global_batch_size = global_batch_size
    self.batch_size = global_batch_size // process_count
    self.offset = process_index * self.batch_size
    self._perms: Dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      # SeedSequence mixes (seed, epoch) fully: unlike seed + epoch, two seeds never share
      # an epoch's order.
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      self._perms[epoch] = perm
    return perm

  def example_ids(self, positions: np.ndarray) -> np.ndarray:
    """Source indices of the examples at stream `positions` (int64 [B])."""
    n = len(self.split)
    epochs, within = np.divmod(positions, n)
    if self.shuffle:
      within = within.copy()
      for e in np.unique(epochs):
        sel = epochs == e
        within[sel] = self._permutation(int(e))[within[sel]]
    return within if self.split.ids is None else self.split.ids[within]

  def __call__(self, step: int) -> Batch:
    positions = step * self.global_batch_size + self.offset + np.arange(self.batch_size)
    valid = (positions < self.total if self.total is not None
             else np.ones(self.batch_size, bool))
    ids = self.example_ids(np.where(valid, positions, 0))
    seeds = preprocess.example_seeds(self.seed, positions)
    what = f"{self.split.source!r}"
    batch = _assemble(self.split.source.read(ids), seeds, self.split.pp, what)
    if self.masked:
      if not valid.all():   # Padding carries zeros, not copies of a real example.
        batch = {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
                 for k, v in batch.items()}
      batch["mask"] = valid.astype(np.float32)
    return batch


# -- iterator --------------------------------------------------------------------------------
class DataIterator:
  """Iterator of per-process batches with a JSON-serialisable state.

  The state is {"step": next global batch index, ...} plus the settings that fix the order
  (source, split, seed, shuffle, global batch size, epochs, examples); `set_state` refuses a
  state whose settings differ, naming each. Process count and worker count may change
  between save and restore: batch t is the same global batch either way.
  """

  def __init__(self, loader: _BatchLoader, num_steps: int, fingerprint: Dict[str, Any],
               worker_count: int, prefetch: int):
    self._loader, self.num_steps, self._fingerprint = loader, num_steps, fingerprint
    self._worker_count, self._prefetch = worker_count, prefetch
    self._step = 0
    self._it = None

  @property
  def num_batches(self) -> Optional[int]:
    """Batches per pass (None when num_epochs=None: the iterator never ends)."""
    return None if self._fingerprint["num_epochs"] is None else self.num_steps

  def _start(self):
    import grain  # Deferred: only iterating needs it.

    ds = grain.MapDataset.range(self._step, self.num_steps).map(self._loader)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if self._prefetch else 0,
                                                 prefetch_buffer_size=self._prefetch))
    if self._worker_count:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    self._it = iter(it_ds)

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> Batch:
    if self._it is None:
      self._start()
    batch = next(self._it)
    self._step += 1
    return batch

  def close(self):
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
    self._it = None

  def get_state(self) -> Dict[str, Any]:
    return {"version": _STATE_VERSION, "step": self._step, **self._fingerprint}

  def set_state(self, state: Dict[str, Any]) -> None:
    if not isinstance(state, dict) or "step" not in state:
      raise ValueError(f"data iterator state {state!r}: expected a dict from get_state()")
    diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in self._fingerprint.items()
             if state.get(k) != v]
    if diffs:
      raise ValueError("data iterator state was saved with different settings, so its step "
                       "would name other batches: " + "; ".join(diffs))
    step = state["step"]
    if not isinstance(step, int) or not 0 <= step <= self.num_steps:
      raise ValueError(f"data iterator state step={step!r}; expected an int in "
                       f"0..{self.num_steps}")
    self.close()
    self._step = step

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  # Interpreter shutdown.
      pass


def _process(process_index: Optional[int], process_count: Optional[int]):
  if process_index is None or process_count is None:
    import jax  # Deferred: callers that pass both never need jax.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in 0..{process_count - 1} "
                     f"(process_count={process_count})")
  return process_index, process_count


def make_iterator(cfg: ml_collections.ConfigDict, split: str = "train", *,
                  global_batch_size: int, seed: int = 0, shuffle: bool = True,
                  num_epochs: Optional[int] = None, drop_remainder: bool = True,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> DataIterator:
  """This process's batches of `split`: dicts of image uint8 [b, H, W, C], label int32 [b].

  Args:
    cfg: config.data (see `default_config`).
    split: pipeline split, mapped to the source's split by data.splits.
    global_batch_size: G, the batch over all processes; each yields b = G // process_count.
    seed: fixes the per-epoch permutations and the per-example preprocessing randomness.
    shuffle: False keeps source order (evaluation).
    num_epochs: passes over the split; None repeats forever.
    drop_remainder: True drops a final partial global batch; False pads it to full size and
      adds "mask" float32 [b] (1 real, 0 padding) to every batch, so nothing is dropped.
    process_index, process_count: this process and the number of processes (None: jax's).
  """
  s = _settings(cfg)
  pi, pc = _process(process_index, process_count)
  if not isinstance(global_batch_size, int) or global_batch_size <= 0:
    raise ValueError(f"global_batch_size={global_batch_size!r}; expected an int > 0")
  if global_batch_size % pc:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={pc}")
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r}; expected an int >= 0")
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
    raise ValueError(f"num_epochs={num_epochs!r}; expected None (forever) or an int > 0")
  data = _open_split(s, split)
  n = len(data)
  total = None if num_epochs is None else n * num_epochs
  if total is None:
    num_steps = sys.maxsize // global_batch_size - 1
  elif drop_remainder:
    num_steps = total // global_batch_size
    if num_steps == 0:
      raise ValueError(f"split {split!r} of data.source={s.source!r} has {n} examples x "
                       f"{num_epochs} epoch(s), fewer than global_batch_size="
                       f"{global_batch_size}: drop_remainder=True leaves no batch")
  else:
    num_steps = -(-total // global_batch_size)
  loader = _BatchLoader(data, seed=seed, shuffle=shuffle, global_batch_size=global_batch_size,
                        process_index=pi, process_count=pc, total=total,
                        masked=not drop_remainder)
  fingerprint = {"source": s.source, "split": split, "seed": seed, "shuffle": bool(shuffle),
                 "global_batch_size": global_batch_size, "num_epochs": num_epochs,
                 "drop_remainder": bool(drop_remainder), "num_examples": n}
  return DataIterator(loader, num_steps, fingerprint, s.worker_count, s.prefetch)


def dataset_info(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """image_shape (H, W, C) after data.pp, num_classes, num_examples {'train', 'test'}.

  Opens both splits, so a missing file or split fails here, before training starts. Also
  gives "shapes" {key: per-example shape after pp} for sources with keys beyond image/label
  (image_shape is None when the source has no "image", e.g. a token cache).
  """
  s = _settings(cfg)
  splits = {name: _open_split(s, name) for name in ("train", "test")}
  train = splits["train"]
  first = _BatchLoader(train, seed=0, shuffle=False, global_batch_size=1, process_index=0,
                       process_count=1, total=None, masked=False)(0)
  shapes = {k: tuple(int(d) for d in v.shape[1:]) for k, v in first.items()}
  return {"image_shape": shapes.get("image"),
          "num_classes": int(train.source.num_classes),
          "num_examples": {name: len(sp) for name, sp in splits.items()},
          "shapes": shapes}
