"""Batched, sharded, deterministic, resumable input pipelines on grain's dataset operations.

Shapes: G global batch, P processes, b = G // P per-process batch, N examples in the split,
E epochs, H/W height/width, C channels. A batch is a dict of numpy arrays: "image" uint8
[b, H, W, C], "label" int32 [b] (plus "mask" float32 [b] when drop_remainder=False, and any
extra keys of the source).

The pipeline is a chain of grain operations (`_local_batches`, `DataIterator._start`):

    grain.MapDataset.range(N)            # the split (after the pp filters) as indices
      .shuffle(seed)                       # epoch e: a permutation drawn from (seed, e)
      .repeat()                            # epochs concatenated: the global stream
      .batch(b)                            # b consecutive stream positions
      [i : T * P : P]                      # process i: every P-th batch from the i-th
      .map_with_index(_BatchLoader)        # batch t: one vectorised read + preprocessing
      .to_iter_dataset(ReadOptions)        # host prefetch in a thread (data.prefetch)
      .mp_prefetch(...)                    # worker processes (data.worker_count), optional
      ThreadPrefetchIterDataset(.map(put)) # device prefetch (DataIterator.to_device)

So global batch t is stream positions [t*G, (t+1)*G) and process i holds its rows
[i*b, (i+1)*b):

  * the global batch does not depend on the number of processes or workers;
  * epoch boundaries: shuffle and repeat come before batching, so every epoch is a whole
    permutation of the split (no example dropped or repeated within an epoch); when G does
    not divide N, the batch at an epoch boundary holds the end of one epoch and the start of
    the next (it may then hold one example twice, once from each epoch). Batching each epoch
    separately would instead drop N mod G examples of every epoch (always the last ones of its
    permutation);
  * the iterator state is grain's own (`get_state`, {"next_index": k} without workers),
    captured after each consumed batch -- with device prefetch too, whose buffered batches are
    not counted -- so a restored iterator repeats exactly the batches that followed;
  * with drop_remainder=False the stream is cut after ceil(E*N / G) global batches and rows
    past the E*N real examples are zeroed and carry "mask" 0, so every process produces the
    same number of batches and multi-host evaluation never waits on a process that ran out.

Batches are made whole by `_BatchLoader` (one gather plus vectorised preprocessing): per-example
Python preprocessing would cost more than a training step of the small CPU models.
"""
from __future__ import annotations

import atexit
import dataclasses
import weakref
from typing import Any, Callable, Dict, List, Optional, Union

import ml_collections
import numpy as np

from arjax.data import preprocess
from arjax.data import sources

Batch = Dict[str, np.ndarray]
_STATE_VERSION = 2   # 1: the hand-written loader's {step} (another data order): refused.


def default_config() -> ml_collections.ConfigDict:
  """Data fields of an experiment config (config.data)."""
  c = ml_collections.ConfigDict()
  c.source = "mnist"      # 'mnist' | 'fashion_mnist' (bundled) | 'tfds:NAME' | 'array_record:PATH' | 'npz:PATH' | text: 'tinyshakespeare' | 'txt:PATH' | 'recall:OPTS' | 'treecall:OPTS'.
  c.seq_len = 256         # tokens per example L of text sources (arjax.data.text); image sources ignore it.
  c.train_chars = 0       # corpus text sources: window only the first U characters of the 'train' split (repeated data, experiments/data_constrained.py); 0 = all. The test split is unchanged.
  c.pp = ""               # preprocessing ops joined by '|', e.g. "resize(16)|flip_lr" (arjax.data.preprocess).
  c.tfds_data_dir = ""    # data_dir for 'tfds:' sources ('' = the TFDS default).
  c.worker_count = 0      # grain worker processes (0 = in-process).
  c.prefetch = 0          # batches computed ahead in one background host thread (0 = on demand).
  c.device_prefetch = 2   # batches put on device ahead in a thread by DataIterator.to_device (the trainer); 0 = in the calling thread.
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
  device_prefetch: int
  splits: Dict[str, str]
  seq_len: int
  train_chars: int


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
  for key in ("worker_count", "prefetch", "device_prefetch", "train_chars"):
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
  if s.train_chars and source_split == "train":
    from arjax.data.text import first_chars
    source = first_chars(source, s.train_chars)
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
  """(t, within-split indices int64 [b]) -> this process's part of global batch t, read and
  preprocessed at once (a picklable grain map function; `map_with_index` supplies t).

  Stream positions t*G + i*b + [0, b) seed the examples' preprocessing; positions at or past
  `total` (E * N; None when the stream never ends) are padding: zeroed, with "mask" 0.
  """

  def __init__(self, split: _Split, *, seed: int, global_batch_size: int, process_index: int,
               total: Optional[int], masked: bool):
    self.split, self.seed, self.total, self.masked = split, seed, total, masked
    self.global_batch_size, self.process_index = global_batch_size, process_index

  def __call__(self, t: int, within: np.ndarray) -> Batch:
    within = np.asarray(within, np.int64)
    positions = (t * self.global_batch_size + self.process_index * len(within)
                 + np.arange(len(within), dtype=np.int64))
    ids = within if self.split.ids is None else self.split.ids[within]
    seeds = preprocess.example_seeds(self.seed, positions)
    batch = _assemble(self.split.source.read(ids), seeds, self.split.pp, repr(self.split.source))
    if self.masked:
      valid = (positions < self.total if self.total is not None
               else np.ones(len(positions), bool))
      if not valid.all():   # Padding carries zeros, not copies of a real example.
        batch = {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
                 for k, v in batch.items()}
      batch["mask"] = valid.astype(np.float32)
    return batch


def _local_batches(split: _Split, *, seed: int, shuffle: bool, global_batch_size: int,
                   process_index: int, process_count: int, num_steps: Optional[int],
                   total: Optional[int], masked: bool):
  """The grain MapDataset of this process's batches: element t is its part of global batch t.

  Returns (dataset, number of global batches T).
  """
  import grain  # Deferred: only building a pipeline needs it.

  # The split's index space [0, N); the loader maps an index to its example (after the pp
  # filters) a batch at a time. (MapDataset.source over the N ids gives the same order, at
  # twice the per-example cost of grain's own range.)
  ds = grain.MapDataset.range(len(split))
  if shuffle:
    ds = ds.shuffle(seed=seed)   # grain reseeds the permutation in every epoch of .repeat().
  ds = ds.repeat().batch(global_batch_size // process_count, drop_remainder=True)
  if num_steps is None:
    num_steps = len(ds) // process_count
  ds = ds[process_index:num_steps * process_count:process_count]
  loader = _BatchLoader(split, seed=seed, global_batch_size=global_batch_size,
                        process_index=process_index, total=total, masked=masked)
  return ds.map_with_index(loader), num_steps


# -- iterator --------------------------------------------------------------------------------
def _allow_worker_processes():
  # grain's worker processes read an absl flag; absl raises UnparsedFlagAccessError when no
  # absl.app parsed the command line (plain scripts, pytest). The flags keep their defaults.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# Iterators with running grain threads or workers. Closed at exit, before module teardown: a
# prefetch thread still alive then makes grain's __del__ print a traceback after the program's
# own error message.
_RUNNING: "weakref.WeakSet[DataIterator]" = weakref.WeakSet()


@atexit.register
def _close_running():
  for it in list(_RUNNING):
    it.close()


class DataIterator:
  """Iterator of per-process batches whose state is grain's checkpointable iterator state.

  `get_state()` is a JSON-serialisable dict: {"version", "step" (global batches consumed),
  "grain" (grain's iterator state after the last consumed batch), "base" (the first global
  batch of the grain iterator that state belongs to), "worker_count"} plus the settings that
  fix the order (source, split, seed, shuffle, global batch size, epochs, drop_remainder,
  examples). `set_state` refuses a state of other settings or of an older version, naming
  what differs. The process count may change between save and restore (batch t is the same
  global batch). A state saved with another data.worker_count (grain's multiprocess state
  is per worker) restores by starting the grain iterator at global batch "step" instead.
  """

  def __init__(self, batches, num_steps: int, fingerprint: Dict[str, Any], worker_count: int,
               prefetch: int, device_prefetch: int):
    self._batches, self.num_steps, self._fingerprint = batches, num_steps, fingerprint
    self._worker_count, self._prefetch = worker_count, prefetch
    self._device_prefetch, self._put = device_prefetch, None
    self._step = 0       # global batches consumed
    self._base = 0       # the grain iterator runs over global batches [base, num_steps)
    self._grain_state: Optional[Dict[str, Any]] = None   # to restore into a fresh iterator
    self._it = None

  @property
  def num_batches(self) -> Optional[int]:
    """Batches per pass (None when num_epochs=None: the iterator never ends)."""
    return None if self._fingerprint["num_epochs"] is None else self.num_steps

  def to_device(self, put: Callable[[Batch], Any]) -> "DataIterator":
    """Yields put(batch) instead (e.g. global jax.Arrays), computed data.device_prefetch
    batches ahead in a background thread so the next batch is on device while a step runs.
    The state stays that of the last batch handed out. Returns self."""
    self.close()   # Keeps the state; the next batch restarts the pipeline with the new stage.
    self._put = put
    return self

  def _start(self):
    import grain  # Deferred: only iterating needs it.

    ds = self._batches[self._base:] if self._base else self._batches
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if self._prefetch else 0,
                                                 prefetch_buffer_size=self._prefetch))
    if self._worker_count:
      _allow_worker_processes()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    if self._put is not None:
      it_ds = it_ds.map(self._put)
      if self._device_prefetch:
        # grain's thread prefetch: its state counts only the batches handed out, not the
        # buffered ones (a hand-rolled buffer around the iterator would be ahead).
        it_ds = grain.experimental.ThreadPrefetchIterDataset(
            it_ds, prefetch_buffer_size=self._device_prefetch)
    it = iter(it_ds)
    if self._grain_state is not None:
      it.set_state(self._grain_state)
    self._it = it
    _RUNNING.add(self)

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> Batch:
    if self._it is None:
      self._start()
    batch = next(self._it)
    self._step += 1
    return batch

  def close(self):
    """Stops grain's threads and worker processes; the state is kept (iteration resumes)."""
    _RUNNING.discard(self)
    if self._it is not None:
      self._grain_state = self._it.get_state()
      close = getattr(self._it, "close", None)
      self._it = None
      if close is not None:
        close()

  def get_state(self) -> Dict[str, Any]:
    grain_state = self._it.get_state() if self._it is not None else self._grain_state
    return {"version": _STATE_VERSION, "step": self._step, "base": self._base,
            "worker_count": self._worker_count, "grain": grain_state, **self._fingerprint}

  def set_state(self, state: Dict[str, Any]) -> None:
    if not isinstance(state, dict) or "step" not in state:
      raise ValueError(f"data iterator state {state!r}: expected a dict from get_state()")
    if state.get("version") != _STATE_VERSION:
      raise ValueError(
          f"data iterator state version {state.get('version')!r}: expected "
          f"{_STATE_VERSION}; it was saved by an older arjax whose data order differs, so it "
          "cannot resume exactly (train again in a new workdir)")
    diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in self._fingerprint.items()
             if state.get(k) != v]
    if diffs:
      raise ValueError("data iterator state was saved with different settings, so its step "
                       "would name other batches: " + "; ".join(diffs))
    step, base, grain_state = state["step"], state.get("base"), state.get("grain")
    if not isinstance(step, int) or not 0 <= step <= self.num_steps:
      raise ValueError(f"data iterator state step={step!r}; expected an int in "
                       f"0..{self.num_steps}")
    if not isinstance(base, int) or not 0 <= base <= step:
      raise ValueError(f"data iterator state base={base!r}; expected an int in 0..{step}")
    if grain_state is not None and not isinstance(grain_state, dict):
      raise ValueError(f"data iterator state grain={grain_state!r}; expected None or a dict "
                       "from grain's get_state()")
    if isinstance(grain_state, dict) and "next_index" in grain_state and (
        grain_state["next_index"] != step - base):
      raise ValueError(f"data iterator state grain={grain_state!r} does not match step={step} "
                       f"and base={base}: expected next_index={step - base}")
    self.close()
    if state.get("worker_count") == self._worker_count:
      self._base, self._grain_state = base, grain_state
    else:   # grain's state is per worker: start a fresh grain iterator at global batch step.
      self._base, self._grain_state = step, None
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
    num_steps = None
  elif drop_remainder:
    num_steps = total // global_batch_size
    if num_steps == 0:
      raise ValueError(f"split {split!r} of data.source={s.source!r} has {n} examples x "
                       f"{num_epochs} epoch(s), fewer than global_batch_size="
                       f"{global_batch_size}: drop_remainder=True leaves no batch")
  else:
    num_steps = -(-total // global_batch_size)
  batches, num_steps = _local_batches(
      data, seed=seed, shuffle=shuffle, global_batch_size=global_batch_size, process_index=pi,
      process_count=pc, num_steps=num_steps, total=total, masked=not drop_remainder)
  fingerprint = {"source": s.source, "split": split, "seed": seed, "shuffle": bool(shuffle),
                 "global_batch_size": global_batch_size, "num_epochs": num_epochs,
                 "drop_remainder": bool(drop_remainder), "num_examples": n}
  return DataIterator(batches, num_steps, fingerprint, s.worker_count, s.prefetch,
                      s.device_prefetch)


def dataset_info(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """image_shape (H, W, C) after data.pp, num_classes, num_examples {'train', 'test'}.

  Opens both splits, so a missing file or split fails here, before training starts. Also
  gives "shapes" {key: per-example shape after pp} for sources with keys beyond image/label
  (image_shape is None when the source has no "image", e.g. a token cache).
  """
  s = _settings(cfg)
  splits = {name: _open_split(s, name) for name in ("train", "test")}
  train = splits["train"]
  first = _BatchLoader(train, seed=0, global_batch_size=1, process_index=0, total=None,
                       masked=False)(0, np.zeros(1, np.int64))
  shapes = {k: tuple(int(d) for d in v.shape[1:]) for k, v in first.items()}
  return {"image_shape": shapes.get("image"),
          "num_classes": int(train.source.num_classes),
          "num_examples": {name: len(sp) for name, sp in splits.items()},
          "shapes": shapes}
