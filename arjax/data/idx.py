"""Readers for the bundled IDX data sets (MNIST, Fashion-MNIST), kept as the original .gz files."""
from __future__ import annotations

import functools
import gzip
import os
from typing import Dict, Tuple

import numpy as np

BUNDLED_DIR = os.path.join(os.path.dirname(__file__), "bundled")
BUNDLED = {
    # name: (folder, number of classes, class names)
    "mnist": ("mnist", 10, tuple(str(i) for i in range(10))),
    "fashion_mnist": ("fashion_mnist", 10, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
}
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: str) -> np.ndarray:
  """Reads one (optionally gzip-compressed) IDX file into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic {data[:4]!r})")
  if data[2] != 0x08:
    raise ValueError(f"{path}: IDX type byte 0x{data[2]:02x}; only unsigned bytes (0x08) are read")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  expected = int(np.prod(dims))
  if len(data) - offset != expected:
    raise ValueError(f"{path}: header says {dims} ({expected} bytes) but {len(data) - offset} "
                     "bytes follow")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


@functools.lru_cache(maxsize=8)
def load_bundled(name: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 28, 28, 1], labels int32 [N]) of a bundled data set."""
  if name not in BUNDLED:
    raise KeyError(f"unknown bundled data set {name!r}; expected one of {sorted(BUNDLED)}")
  if split not in _FILES:
    raise KeyError(f"unknown split {split!r} for {name!r}; expected one of {sorted(_FILES)}")
  folder = os.path.join(BUNDLED_DIR, BUNDLED[name][0])
  images = read_idx(os.path.join(folder, _FILES[split][0]))[..., None]
  labels = read_idx(os.path.join(folder, _FILES[split][1])).astype(np.int32)
  if len(images) != len(labels):
    raise ValueError(f"{name}/{split}: {len(images)} images but {len(labels)} labels")
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def num_classes(name: str) -> int:
  return BUNDLED[name][1]
