"""Random-access data sources, chosen by `data.source` ("NAME" or "SCHEME:ARG").

Shapes: N examples, B batch, H/W height/width, C channels. An example is a dict of numpy
arrays: "image" uint8 [H, W, C] (a [H, W] image gets C = 1), "label" int32 [] and, for
ArrayRecord caches, any further keys (e.g. "tokens").

Schemes (registry `SOURCES`; a bare name is a bundled data set):
  mnist, fashion_mnist, bundled:NAME  the IDX files shipped in arjax/data/bundled.
  npz:PATH           one .npz file. Keys "{split}_image" / "{split}_label" (e.g. train_image,
                     test_label), or "image" / "label" when PATH contains "{split}" (one file
                     per split) -- without "{split}" those plain keys are the train split only.
                     image uint8 [N, H, W] or [N, H, W, C]; label integer [N]; an optional
                     scalar "num_classes" (else max label + 1).
  array_record:PATH  ArrayRecord file(s), one record per example, each the
                     `flax.serialization.msgpack_serialize` of a dict of numpy arrays with at
                     least "label" (see `write_array_record`). PATH may contain "{split}" and
                     glob characters (sharded files, read in sorted order).
  tfds:NAME          `tfds.data_source(NAME, split=..., data_dir=data.tfds_data_dir)`: a TFDS
                     data set prepared as ArrayRecord (needs `pip install -e .[tfds]`); its
                     "image" and "label" features are read.

Text (arjax.data.text; examples {"tokens" int32 [L], "token_mask" float32 [L], "label"}, with
L = data.seq_len):
  tinyshakespeare, corpus:NAME  a bundled text corpus (90/10 train/test split of characters).
  txt:PATH           a user's UTF-8 text file in the 65-character vocabulary, split the same way.
  recall, recall:OPTS, treecall, treecall:OPTS
                     tinylang's associative recall and its PCFG variant, generated from a seed.

A source without split structure (a path without "{split}" and plain keys) has only the
split "train": reading another split from it is an error, never a silent copy of train
(set data.splits.test = "train" to evaluate on training data on purpose).

Array sources are read by fancy indexing (vectorised); record sources one record at a time.
Every source has a stable `__repr__` (the source string and split), which checkpoints use.
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from arjax.data import idx
from arjax.data.errors import MissingSplitError  # noqa: F401  (raised here; importable from here)
from arjax.registry import Registry

Example = Dict[str, np.ndarray]
SOURCES: Registry = Registry("data source scheme")
_FIELD = "data.source"
_EXPECTED_IMAGE = "uint8 [N, H, W] or [N, H, W, C]"




# -- validation ------------------------------------------------------------------------------
def check_images(images: np.ndarray, where: str) -> np.ndarray:
  """Checks uint8 [N, H, W(, C)] and returns [N, H, W, C]."""
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(f"{where}: images are {images.dtype} {list(images.shape)}; expected "
                     f"{_EXPECTED_IMAGE}")
  return images[..., None] if images.ndim == 3 else images


def check_labels(labels: np.ndarray, num: int, where: str) -> np.ndarray:
  """Checks integer labels [num], >= 0, and returns them as int32."""
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: labels are {labels.dtype} {list(labels.shape)}; expected "
                     f"integers [N]")
  if len(labels) != num:
    raise ValueError(f"{where}: {num} images but {len(labels)} labels; expected one label "
                     "per image")
  if num and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
    raise ValueError(f"{where}: labels span {labels.min()}..{labels.max()}; expected "
                     "0..2**31-1")
  return labels.astype(np.int32)


def canonical_example(example: Dict[str, Any], where: str) -> Example:
  """Numpy values; image uint8 [H, W, C]; label int32 []; errors name the source/record."""
  if not isinstance(example, dict):
    raise ValueError(f"{where}: record is a {type(example).__name__}; expected a dict of arrays")
  out = {k: np.asarray(v) for k, v in example.items()}
  if "label" not in out:
    raise ValueError(f"{where}: record has keys {sorted(out)}; expected a 'label'")
  label = out["label"]
  if label.shape != () or not np.issubdtype(label.dtype, np.integer) or label < 0:
    raise ValueError(f"{where}: label is {label.dtype} {list(label.shape)} = {label}; expected "
                     "an integer scalar >= 0")
  out["label"] = label.astype(np.int32)
  if "image" in out:
    out["image"] = check_images(out["image"][None], where)[0]
  return out


# -- sources ---------------------------------------------------------------------------------
class ArraySource:
  """Examples held in memory as arrays with a leading N axis; read by fancy indexing."""

  def __init__(self, name: str, split: str, arrays: Dict[str, np.ndarray],
               num_classes: Optional[int] = None):
    self.name, self.split, self.arrays = name, split, arrays
    self.num_classes = (int(arrays["label"].max()) + 1 if len(arrays["label"]) else 0
                        ) if num_classes is None else int(num_classes)

  def __len__(self) -> int:
    return len(self.arrays["label"])

  def __getitem__(self, i: int) -> Example:
    return {k: v[i] for k, v in self.arrays.items()}

  def read(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
    """A batch {key: [B, ...]} of the examples `ids` (int [B])."""
    return {k: v[ids] for k, v in self.arrays.items()}

  def labels(self) -> np.ndarray:
    return self.arrays["label"]

  def __repr__(self) -> str:
    return f"ArraySource({self.name!r}, split={self.split!r})"


class RecordSource:
  """Examples stored one per record; `decode(record) -> example dict` (before checking)."""

  def __init__(self, name: str, split: str, records, decode: Callable[[Any], Dict[str, Any]],
               num_classes: Optional[int] = None):
    self.name, self.split, self._records, self._decode = name, split, records, decode
    self._num_classes = num_classes
    if len(records):   # Fail at start, not at the first batch, on a wrong record layout.
      self[0]

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> Example:
    return canonical_example(self._decode(self._records[int(i)]),
                             f"{self.name} (split {self.split!r}) record {int(i)}")

  def read(self, ids: np.ndarray) -> List[Example]:
    """The examples `ids` (int [B]) as a list; shapes may differ between records."""
    many = getattr(self._records, "__getitems__", None)
    raw = many([int(i) for i in ids]) if many else [self._records[int(i)] for i in ids]
    where = f"{self.name} (split {self.split!r}) record"
    return [canonical_example(self._decode(r), f"{where} {int(i)}") for r, i in zip(raw, ids)]

  @functools.cached_property
  def _labels(self) -> np.ndarray:
    # Reads every record: only done when a filter or the class count needs all labels.
    return np.array([self[i]["label"] for i in range(len(self))], np.int32)

  def labels(self) -> np.ndarray:
    return self._labels

  @property
  def num_classes(self) -> int:
    if self._num_classes is None:
      labels = self.labels()
      self._num_classes = int(labels.max()) + 1 if len(labels) else 0
    return self._num_classes

  def __repr__(self) -> str:
    return f"RecordSource({self.name!r}, split={self.split!r})"


# -- schemes ---------------------------------------------------------------------------------
def _split_path(path: str, split: str, spec: str) -> str:
  if "{split}" in path:
    return path.replace("{split}", split)
  if split != "train":
    raise MissingSplitError(
        f"{_FIELD}={spec!r} has no split structure, so it holds only the split 'train', not "
        f"{split!r}: put '{{split}}' in the path, or set data.splits.{split} = 'train' to "
        "read the training data on purpose")
  return path


@SOURCES.register("bundled")
def bundled_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0) -> ArraySource:
  """MNIST / Fashion-MNIST as shipped in arjax/data/bundled (uint8 [N, 28, 28, 1])."""
  if arg not in idx.BUNDLED:
    raise KeyError(f"unknown bundled data set {arg!r} ({_FIELD}); expected one of "
                   f"{sorted(idx.BUNDLED)}")
  if split not in ("train", "test"):
    raise MissingSplitError(f"{_FIELD}={arg!r} has splits ['test', 'train'], not {split!r}")
  images, labels = idx.load_bundled(arg, split)
  return ArraySource(arg, split, {"image": images, "label": labels}, idx.num_classes(arg))


@SOURCES.register("npz")
def npz_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0) -> ArraySource:
  """One .npz file (layout in the module docstring)."""
  spec = f"npz:{arg}"
  if "{split}" in arg:
    path, prefixes = arg.replace("{split}", split), (f"{split}_", "")
  else:
    path, prefixes = arg, (f"{split}_", "") if split == "train" else (f"{split}_",)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{_FIELD}={spec!r}: file {path!r} not found")
  with np.load(path, allow_pickle=False) as z:
    keys = set(z.files)
    prefix = next((p for p in prefixes if f"{p}image" in keys), None)
    if prefix is None:
      wanted = " or ".join(repr(f"{p}image") for p in prefixes)
      raise MissingSplitError(
          f"{_FIELD}={spec!r}: {path!r} has no {wanted} for split {split!r}; found keys "
          f"{sorted(keys)}. Expected '{{split}}_image'/'{{split}}_label', or 'image'/'label' "
          "with '{split}' in the path")
    if f"{prefix}label" not in keys:
      raise ValueError(f"{_FIELD}={spec!r}: {path!r} has {prefix}image but no {prefix}label; "
                       f"found keys {sorted(keys)}")
    where = f"{path} ({prefix}image)"
    images = check_images(z[f"{prefix}image"], where)
    labels = check_labels(z[f"{prefix}label"], len(images), f"{path} ({prefix}label)")
    num_classes = int(z["num_classes"]) if "num_classes" in keys else None
  images.setflags(write=False)
  labels.setflags(write=False)
  return ArraySource(spec, split, {"image": images, "label": labels}, num_classes)


def _meta_path(path: str) -> str:
  return path + ".json"


def _decode_msgpack(record: bytes) -> Dict[str, Any]:
  from flax import serialization  # Imported here: flax is heavy and only records need it.
  return serialization.msgpack_restore(record)


@SOURCES.register("array_record")
def array_record_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0) -> RecordSource:
  """ArrayRecord file(s) of msgpack-serialised example dicts (see `write_array_record`)."""
  import grain  # Deferred like every optional reader.

  spec = f"array_record:{arg}"
  path = _split_path(arg, split, spec)
  paths = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing or not paths:
    raise FileNotFoundError(f"{_FIELD}={spec!r}: file {missing[0] if missing else path!r} "
                            "not found")
  records = grain.sources.ArrayRecordDataSource(paths)
  num_classes = None
  if len(paths) == 1 and os.path.isfile(_meta_path(path)):
    with open(_meta_path(path)) as f:
      meta = json.load(f)
    if meta.get("num_examples") == len(records):   # A stale side file is ignored.
      num_classes = meta.get("num_classes")
  return RecordSource(spec, split, records, _decode_msgpack, num_classes)


def write_array_record(path: str, examples: Iterable[Dict[str, Any]]) -> int:
  """Writes examples (dicts of numpy arrays) to one ArrayRecord file; returns their number.

  Each record is `flax.serialization.msgpack_serialize(example)`, written with group_size:1
  so that random access reads one record. A side file PATH.json records the number of
  examples and classes (max label + 1), so that opening the file does not scan it.
  """
  from array_record.python import array_record_module
  from flax import serialization

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  count, num_classes = 0, 0
  try:
    for example in examples:
      ex = canonical_example(example, f"write_array_record({path!r}) example {count}")
      num_classes = max(num_classes, int(ex["label"]) + 1)
      writer.write(serialization.msgpack_serialize(ex))
      count += 1
  finally:
    writer.close()
  with open(_meta_path(path), "w") as f:
    json.dump({"num_examples": count, "num_classes": num_classes}, f)
  return count


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{_FIELD}='tfds:...' needs tensorflow-datasets, which is not "
                      "installed: pip install -e .[tfds]") from e
  return tfds


def _tfds_decode(example: Dict[str, Any]) -> Dict[str, Any]:
  # Other features (file names, ids: often strings) do not batch; only these two are used.
  return {k: example[k] for k in ("image", "label") if k in example}


@SOURCES.register("tfds")
def tfds_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0) -> RecordSource:
  """A TFDS data set prepared as ArrayRecord, read without TensorFlow."""
  tfds = _import_tfds()
  spec = f"tfds:{arg}"
  try:
    ds = tfds.data_source(arg, split=split, data_dir=data_dir or None)
  except Exception as e:  # pylint: disable=broad-except  # tfds raises many kinds.
    where = f" --data_dir={data_dir}" if data_dir else ""
    raise FileNotFoundError(
        f"{_FIELD}={spec!r}: cannot open split {split!r} of the TFDS data set {arg!r} "
        f"(data_dir={data_dir or 'default'}): {e}. Prepare it as ArrayRecord with: "
        f"tfds build {arg} --file_format=array_record{where}") from e
  try:
    num_classes = int(ds.dataset_info.features["label"].num_classes)
  except Exception:  # pylint: disable=broad-except  # No ClassLabel: count from the data.
    num_classes = None
  return RecordSource(spec, split, ds, _tfds_decode, num_classes)


# -- opening ---------------------------------------------------------------------------------
def parse_spec(spec: str):
  """'mnist' -> ('bundled', 'mnist'); 'npz:/a/b.npz' -> ('npz', '/a/b.npz')."""
  scheme, sep, arg = spec.partition(":")
  if not sep:
    if spec in idx.BUNDLED:
      return "bundled", spec
    if spec in BARE_NAMES:
      return BARE_NAMES[spec]
    raise KeyError(f"unknown data source {spec!r} (config field {_FIELD!r}); expected a "
                   f"bundled name {sorted(idx.BUNDLED) + sorted(BARE_NAMES)} or SCHEME:ARG with scheme one of "
                   f"{SOURCES.names()}")
  if scheme not in SOURCES:
    raise KeyError(f"unknown data source scheme {scheme!r} in {spec!r} (config field "
                   f"{_FIELD!r}); expected one of {SOURCES.names()}")
  if not arg:
    raise ValueError(f"{_FIELD}={spec!r}: nothing after '{scheme}:'")
  return scheme, arg


# -- text ------------------------------------------------------------------------------------
@SOURCES.register("corpus")
def corpus_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0):
  """A bundled text corpus as windows of data.seq_len characters (arjax.data.text)."""
  from arjax.data import text
  return text.TextWindows(arg, split, text.split_ids(text.corpus_ids(arg), split, arg), seq_len)


@SOURCES.register("txt")
def txt_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0):
  """A user's UTF-8 text file as windows of data.seq_len characters (arjax.data.text)."""
  from arjax.data import text
  spec = f"txt:{arg}"
  return text.TextWindows(spec, split, text.split_ids(text.file_ids(arg), split, spec), seq_len)


@SOURCES.register("recall")
def recall_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0):
  """tinylang's associative recall, generated (arjax.data.text)."""
  from arjax.data import text
  return text.recall_source(arg, split, seq_len)


@SOURCES.register("treecall")
def treecall_source(arg: str, split: str, data_dir: str = "", seq_len: int = 0):
  """tinylang's associative recall over a random PCFG, generated (arjax.data.text)."""
  from arjax.data import text
  return text.treecall_source(arg, split, seq_len)


# Bare names of sources that are not bundled image sets: name -> (scheme, arg).
BARE_NAMES = {"tinyshakespeare": ("corpus", "tinyshakespeare"), "recall": ("recall", ""),
              "treecall": ("treecall", "")}


def _stamp(arg: str, split: str):
  """Modification times of the files behind a source, so that a rewritten file is reread."""
  path = arg.replace("{split}", split)
  paths = glob.glob(path) if glob.has_magic(path) else [path]
  return tuple((p, os.path.getmtime(p)) for p in sorted(paths) if os.path.isfile(p))


@functools.lru_cache(maxsize=16)
def _open_cached(scheme: str, arg: str, split: str, data_dir: str, seq_len: int, stamp):
  del stamp  # Only part of the cache key.
  return SOURCES.get(scheme, field=_FIELD)(arg, split, data_dir, seq_len=seq_len)


def open_source(spec: str, split: str, data_dir: str = "", seq_len: int = 0):
  """Opens (and caches) the source `spec` for `split`, checking its layout. `seq_len`: tokens
  per example of text sources (data.seq_len); image sources ignore it."""
  scheme, arg = parse_spec(spec)
  return _open_cached(scheme, arg, split, data_dir, seq_len, _stamp(arg, split))


def source_names() -> Sequence[str]:
  return sorted(idx.BUNDLED) + sorted(BARE_NAMES) + [f"{s}:..." for s in SOURCES.names()]
