"""Token cache: a data set encoded once by a trained tokenizer, for generators to train on.

    write_token_cache("workdirs/tok_vq", "mnist", "/data/mnist_vq/{split}.array_record")

writes one ArrayRecord file per split (`arjax.data.sources.write_array_record` layout, read
by the `array_record:PATH` source), each record {"tokens": int32 [N], "label": int32 []} for a
discrete tokenizer or {"latents": float32 [N, D], "label"} for a continuous one (KL-VAE), plus
PATH.tokenizer.json naming the tokenizer (workdir, step, vocab_size, grid, tokens_per_image).

A generator reads it with

    config.data.source = "array_record:/data/mnist_vq/{split}.array_record"
    config.tokenizer.name = "cached"
    config.tokenizer.vocab_size, config.tokenizer.grid = 512, 7
    config.tokenizer.checkpoint = "workdirs/tok_vq"    # decodes samples to pixels

`load_tokenizer(workdir)` restores a trained tokenizer for encoding and decoding.

Legend: B batch, H/W image size, C channels, N tokens per image, D latent channels.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import jax
import ml_collections
import numpy as np

_log = logging.getLogger("arjax.tokenize")


class TrainedTokenizer:
  """A restored tokenizer run: jitted encode (uint8 images -> tokens) and decode (-> uint8)."""

  def __init__(self, workdir: str, step: Optional[int] = None):
    from arjax.train.restore import load_run, load_workdir_config
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"tokenizer checkpoint workdir {workdir!r} not found")
    config = load_workdir_config(workdir)
    exp, state, self.step = load_run(workdir, step)
    if exp.evaluation != "tokenizer":
      raise ValueError(f"{workdir!r} holds a {config.model.name!r} run, not a tokenizer "
                       "(model.name='autoencoder')")
    self.workdir, self.config = workdir, config
    model = exp.abstract_model
    self.vocab_size = int(model.vocab_size)
    self.grid = tuple(int(g) for g in model.grid)
    self.tokens_per_image = int(model.tokens_per_image)
    self.continuous = self.vocab_size == 0
    self.image_shape = (model.image_size, model.image_size, model.channels)
    params = exp.eval_params(state)
    fm = exp.fm
    self._encode = jax.jit(lambda images: fm.bind(params).encode(images))
    self._decode = jax.jit(lambda tokens: fm.bind(params).decode(tokens))

  def encode(self, images) -> np.ndarray:
    """uint8 [B, H, W, C] -> int32 [B, N] (continuous: float32 [B, N, D])."""
    return np.asarray(jax.device_get(self._encode(images)))

  def decode(self, tokens) -> np.ndarray:
    """int32 [B, N] (continuous: float [B, N, D]) -> uint8 [B, H, W, C]."""
    return np.asarray(jax.device_get(self._decode(tokens)))

  def describe(self) -> Dict[str, Any]:
    return {"workdir": os.path.abspath(self.workdir), "step": int(self.step),
            "vocab_size": self.vocab_size, "grid": list(self.grid),
            "tokens_per_image": self.tokens_per_image, "continuous": self.continuous}


_LOADED: Dict[str, TrainedTokenizer] = {}


def load_tokenizer(workdir: str) -> TrainedTokenizer:
  """The latest checkpoint of tokenizer run `workdir`, restored once per process."""
  key = os.path.abspath(workdir)
  if key not in _LOADED:
    _LOADED[key] = TrainedTokenizer(workdir)
  return _LOADED[key]


def encode_split(tok: TrainedTokenizer, data_config, split: str, *, batch_size: int = 256,
                 num_examples: int = -1,
                 progress: Optional[Callable[[int, Optional[int], int], None]] = None
                 ) -> Iterable[Dict]:
  """Yields cache records {"tokens" | "latents", "label"} of `split`, in source order;
  `progress(batches done, batches in total, examples done)` after every batch."""
  from arjax import data as data_lib
  it = data_lib.make_iterator(data_config, split=split, global_batch_size=batch_size, seed=0,
                              shuffle=False, num_epochs=1, drop_remainder=False)
  total = it.num_batches  # a property
  done = 0
  key = "latents" if tok.continuous else "tokens"
  for i, batch in enumerate(it):
    images = batch["image"]
    if tuple(images.shape[1:]) != tok.image_shape:
      raise ValueError(f"data {data_config.source!r} split {split!r} has images "
                       f"{tuple(images.shape[1:])} but the tokenizer in {tok.workdir!r} takes "
                       f"{tok.image_shape}")
    codes = tok.encode(images)
    keep = batch["mask"] > 0 if "mask" in batch else np.ones(len(images), bool)
    for code, label, k in zip(codes, batch["label"], keep):
      if not k or 0 <= num_examples <= done:
        continue
      done += 1
      yield {key: code.astype(np.float32 if tok.continuous else np.int32),
             "label": np.asarray(label, np.int32)}
    if progress is not None:
      progress(i + 1, total, done)
    if 0 <= num_examples <= done:
      break


def write_token_cache(tokenizer_workdir: str, data: str, out: str,
                      splits: Sequence[str] = ("train", "test"), *, batch_size: int = 256,
                      num_examples: int = -1) -> Dict[str, Any]:
  """Encodes `splits` of data source `data` with the tokenizer run in `tokenizer_workdir` and
  writes them to `out` (with '{split}' when there are several splits). Returns a summary."""
  from arjax import data as data_lib
  from arjax.data.sources import write_array_record
  if len(splits) > 1 and "{split}" not in out:
    raise ValueError(f"--out {out!r} must contain '{{split}}' to hold the splits {list(splits)}")
  tok = load_tokenizer(tokenizer_workdir)
  data_config = data_lib.default_config()
  data_config.source = data
  data_config.pp = tok.config.data.pp
  summary: Dict[str, Any] = {"tokenizer": tok.describe(), "files": {}}
  for split in splits:
    path = out.replace("{split}", split)
    start = time.time()

    def report(batches, total, examples, split=split, start=start):
      if batches % 20 == 0 or batches == total:
        rate = examples / max(time.time() - start, 1e-9)
        _log.info("%s: batch %d/%s, %d examples encoded (%.0f/s)", split, batches, total,
                  examples, rate)

    n = write_array_record(path, encode_split(tok, data_config, split, batch_size=batch_size,
                                              num_examples=num_examples, progress=report))
    with open(path + ".tokenizer.json", "w") as f:
      json.dump(dict(tok.describe(), data=data, split=split, num_examples=n), f, indent=2)
    _log.info("%s: wrote %d examples to %s (%.1fs)", split, n, path, time.time() - start)
    summary["files"][split] = {"path": path, "num_examples": n}
  return summary


def check_cached_tokenizer(workdir: str, vocab_size: int, grid: int) -> Dict[str, Any]:
  """Checks that the tokenizer run `workdir` (config field tokenizer.checkpoint) has the
  vocabulary and grid a cached-token generator config states; returns its model config."""
  from arjax.train.restore import load_workdir_config
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"tokenizer.checkpoint={workdir!r}: no tokenizer run there "
                            f"({os.path.join(workdir, 'config.json')} not found)")
  m = load_workdir_config(workdir).model
  if m.get("name") != "autoencoder":
    raise ValueError(f"tokenizer.checkpoint={workdir!r} holds a {m.get('name')!r} run, not a "
                     "tokenizer (model.name='autoencoder')")
  from flax import nnx
  from arjax.models.autoencoder import Autoencoder
  model = nnx.eval_shape(lambda: Autoencoder(ml_collections.ConfigDict({"model": m}),
                                             rngs=nnx.Rngs(0)))
  if model.vocab_size != vocab_size or tuple(model.grid) != (grid, grid):
    raise ValueError(f"tokenizer.vocab_size={vocab_size}, tokenizer.grid={grid} disagree with "
                     f"the tokenizer checkpoint {workdir!r}: vocab_size={model.vocab_size}, "
                     f"grid={model.grid[0]}x{model.grid[1]}")
  return m
