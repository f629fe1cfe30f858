"""Token cache: a data set encoded once by a trained tokenizer, for generators to train on.

    write_token_cache("workdirs/tok_vq", "mnist", "/data/mnist_vq/{split}.array_record")

writes one ArrayRecord file per split (`arjax.data.sources.write_array_record` layout, read
by the `array_record:PATH` source), each record {"tokens": int32 [N], "label": int32 []} for a
discrete tokenizer or {"latents": float32 [N, D], "label"} for a continuous one (KL-VAE); a
hybrid multi-scale run (quantizer.hybrid=True, HART) adds "residual": float32 [s^2, Dv], the
continuous residual f - f_hat_discrete on the last scale's s x s grid (`hybrid_split`), which
model 'hart' reads as batch['residual']; plus
PATH.tokenizer.json naming the tokenizer (workdir, step, vocab_size, grid, tokens_per_image).

A generator reads it with

    config.data.source = "array_record:/data/mnist_vq/{split}.array_record"
    config.tokenizer.name = "cached"
    config.tokenizer.vocab_size, config.tokenizer.grid = 512, 7
    config.tokenizer.checkpoint = "workdirs/tok_vq"    # decodes samples to pixels

The tokenizer run is restored by `arjax.loading.load_tokenizer` (parameters only, frozen). This
module sits in the train layer, above the data pipeline and the loader (docs/architecture.md);
`python -m arjax.tokenize` is its entry point.

Legend: B batch, H/W image size, C channels, N tokens per image, D latent channels.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import jax
import numpy as np

from arjax import data as data_lib
from arjax.data.sources import write_array_record
from arjax.loading import TrainedTokenizer, load_tokenizer

_log = logging.getLogger("arjax.tokenize")


def encode_split(tok: TrainedTokenizer, data_config, split: str, *, batch_size: int = 256,
                 num_examples: int = -1,
                 progress: Optional[Callable[[int, Optional[int], int], None]] = None
                 ) -> Iterable[Dict]:
  """Yields cache records {"tokens" | "latents", "label"} (a hybrid run's: also "residual"
  float32 [s^2, Dv]) of `split`, in source order;
  `progress(batches done, batches in total, examples done)` after every batch."""
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
    if tok.hybrid:  # HART: the continuous residual of the last scale rides along
      codes, residual = jax.device_get(tok.encode_hybrid(images))
      codes, residual = np.asarray(codes), np.asarray(residual, np.float32)
    else:
      codes, residual = np.asarray(jax.device_get(tok.encode(images))), None
    keep = batch["mask"] > 0 if "mask" in batch else np.ones(len(images), bool)
    for j, (code, label, k) in enumerate(zip(codes, batch["label"], keep)):
      if not k or 0 <= num_examples <= done:
        continue
      done += 1
      record = {key: code.astype(np.float32 if tok.continuous else np.int32),
                "label": np.asarray(label, np.int32)}
      if residual is not None:
        record["residual"] = residual[j]
      yield record
    if progress is not None:
      progress(i + 1, total, done)
    if 0 <= num_examples <= done:
      break


def write_token_cache(tokenizer_workdir: str, data: str, out: str,
                      splits: Sequence[str] = ("train", "test"), *, batch_size: int = 256,
                      num_examples: int = -1) -> Dict[str, Any]:
  """Encodes `splits` of data source `data` with the tokenizer run in `tokenizer_workdir` and
  writes them to `out` (with '{split}' when there are several splits). Returns a summary."""
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
