"""Metric writing and progress on clu's parts, without TensorFlow.

`create_writer(workdir)` is a clu `MetricWriter` (`metric_writers.MultiWriter`) over

  TensorboardXWriter  every kind clu writes (scalars, images, videos, audios, texts, histograms,
                      hparams, summaries) into one TensorBoard event file, WORKDIR/tensorboard/;
  JsonlWriter         the scalars, one JSON line {"step": S, name: value, ...} per
                      `write_scalars` call, in WORKDIR/metrics.jsonl (tests and plots read it);

on process 0; the other processes get a MultiWriter of no writers (every call does nothing).
The writes are synchronous (not clu's AsyncMultiWriter): a killed run keeps every line written
before the kill (the crash tests compare the losses of killed and resumed runs), and
tensorboardX already writes its event file from a background thread.

`ReportProgress` is clu's `periodic_actions.ReportProgress` (steps/s, uptime, ETA, work-unit
notes) whose estimates the training loop writes with the step's metrics and logs.

clu.metric_writers imports its TensorFlow SummaryWriter at import time (RECIPES.md section 4):
without TensorFlow a stub of that one submodule is registered first; clu's own SummaryWriter
then raises ImportError when built, and every other writer works.

Legend: N images (videos, clips), H/W height/width, C channels, T frames (video) or samples
(audio).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import types
import wave
from typing import Any, Dict, Mapping, Optional

import numpy as np

if (importlib.util.find_spec("tensorflow") is None
    and "clu.metric_writers.summary_writer" not in sys.modules):
  _stub = types.ModuleType("clu.metric_writers.summary_writer")

  class SummaryWriter:  # what `clu.metric_writers.SummaryWriter` names without TensorFlow.

    def __init__(self, *args, **kwargs):
      raise ImportError("clu's SummaryWriter needs tensorflow; arjax writes event files with "
                        "arjax.train.writer.TensorboardXWriter")

  _stub.SummaryWriter = SummaryWriter
  sys.modules["clu.metric_writers.summary_writer"] = _stub

from clu import metric_writers, periodic_actions  # noqa: E402  (after the stub)
from clu.metric_writers import interface  # noqa: E402

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def jsonl_path(workdir: str) -> str:
  """WORKDIR/metrics.jsonl: the scalar log of a run."""
  return os.path.join(workdir, JSONL_NAME)


def _scalar(key: str, value: Any) -> float:
  a = np.asarray(value)
  if a.size != 1:
    raise ValueError(f"scalar metric {key!r} has shape {a.shape}; expected a single value")
  return float(a.reshape(()))


class TensorboardXWriter(interface.MetricWriter):
  """clu's MetricWriter interface over one tensorboardX event file in `logdir`."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._w = SummaryWriter(logdir=logdir)
    self.logdir = logdir

  def _add(self, summary, step: Optional[int]) -> None:
    self._w._get_file_writer().add_summary(summary, step)

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Optional[Mapping[str, Any]] = None):
    """Tensors without TensorFlow's summary metadata: one value -> a scalar, more -> a
    histogram. A `metadata` (a TF SummaryMetadata proto) cannot be written without TF."""
    if metadata:
      raise ValueError(f"write_summaries: metadata for {sorted(metadata)} needs TensorFlow's "
                       "SummaryWriter; write scalars, images or histograms instead")
    for key, value in values.items():
      a = np.asarray(value)
      if a.size == 1:
        self._w.add_scalar(key, float(a.reshape(())), step)
      else:
        self._w.add_histogram(key, a.reshape(-1), step)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for key, value in scalars.items():
      self._w.add_scalar(key, _scalar(key, value), step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    """Images [N, H, W, C] or [H, W, C], uint8 or float in [0, 1]; C in 1, 3, 4."""
    for key, value in images.items():
      a = np.asarray(value)
      if a.ndim == 4:
        self._w.add_images(key, a, step, dataformats="NHWC")
      elif a.ndim == 3:
        self._w.add_image(key, a, step, dataformats="HWC")
      else:
        raise ValueError(f"image {key!r} has shape {a.shape}; expected [N, H, W, C] or "
                         "[H, W, C]")

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    """Videos [N, T, H, W, C] (uint8, or float in [0, 1]): each an animated GIF image summary
    `KEY/n` (what tensorboardX writes through moviepy, built here with Pillow)."""
    from PIL import Image
    from tensorboardX.proto.summary_pb2 import Summary
    for key, value in videos.items():
      a = np.asarray(value)
      if a.ndim != 5 or a.shape[-1] not in (1, 3):
        raise ValueError(f"video {key!r} has shape {a.shape}; expected [N, T, H, W, C] with "
                         "C in (1, 3)")
      if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
      for n, clip in enumerate(a):
        frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in clip]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                       duration=250, loop=0)
        image = Summary.Image(height=clip.shape[1], width=clip.shape[2],
                              colorspace=clip.shape[3], encoded_image_string=buf.getvalue())
        self._add(Summary(value=[Summary.Value(tag=f"{key}/{n}", image=image)]), step)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    """Clips [N, T, C] of floats in [-1, 1] (C in 1, 2): each a 16-bit WAV summary `KEY/n`
    (encoded with the standard library's `wave`; tensorboardX's needs soundfile)."""
    from tensorboardX.proto.summary_pb2 import Summary
    for key, value in audios.items():
      a = np.asarray(value, np.float64)
      if a.ndim != 3 or a.shape[-1] not in (1, 2):
        raise ValueError(f"audio {key!r} has shape {a.shape}; expected [N, T, C], C in (1, 2)")
      if not np.all(np.abs(a) <= 1.0):
        raise ValueError(f"audio {key!r} has samples outside [-1, 1] (or NaN)")
      for n, clip in enumerate(a):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
          w.setnchannels(clip.shape[1])
          w.setsampwidth(2)
          w.setframerate(int(sample_rate))
          w.writeframes((clip * 32767).round().astype("<i2").tobytes())
        audio = Summary.Audio(sample_rate=float(sample_rate), num_channels=clip.shape[1],
                              length_frames=clip.shape[0], encoded_audio_string=buf.getvalue(),
                              content_type="audio/wav")
        self._add(Summary(value=[Summary.Value(tag=f"{key}/{n}", audio=audio)]), step)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for key, value in texts.items():
      self._w.add_text(key, str(value), step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Optional[Mapping[str, int]] = None):
    for key, value in arrays.items():
      bins = (num_buckets or {}).get(key)
      self._w.add_histogram(key, np.asarray(value).reshape(-1), step,
                            bins="tensorflow" if bins is None else int(bins))

  def write_hparams(self, hparams: Mapping[str, Any]):
    """Into the run's own event file (tensorboardX's add_hparams opens a second writer: a new
    sub-run, or a corrupted file when pointed at this one; RECIPES.md section 4)."""
    from tensorboardX.summary import hparams as hparams_summaries
    plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
             for k, v in hparams.items()}
    for summary in hparams_summaries(plain, {}):
      self._add(summary, None)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class JsonlWriter(interface.MetricWriter):
  """The scalar log: one line {"step": S, name: value, ...} per `write_scalars` call, appended
  to `path` and flushed at once (a killed run keeps every line written before the kill).

  metrics.jsonl holds scalar curves only (plots and tests read numbers from it): the other kinds
  (images, videos, audios, texts, histograms, hparams, tensor summaries) are written by the
  TensorBoard writer next to this one in `create_writer`, and this writer accepts and skips them.
  """

  def __init__(self, path: str):
    self.path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step), **{k: _scalar(k, v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass  # not scalars: the event file has them (class docstring).

  def write_images(self, step, images):
    pass  # not scalars: the event file has them (class docstring).

  def write_videos(self, step, videos):
    pass  # not scalars: the event file has them (class docstring).

  def write_audios(self, step, audios, *, sample_rate):
    pass  # not scalars: the event file has them (class docstring).

  def write_texts(self, step, texts):
    pass  # not scalars: the event file has them (class docstring).

  def write_histograms(self, step, arrays, num_buckets=None):
    pass  # not scalars: the event file has them (class docstring).

  def write_hparams(self, hparams):
    pass  # the run's config is WORKDIR/config.json; the event file has the hparams.

  def flush(self):
    pass  # every line is written and closed when it is written.

  def close(self):
    pass


def create_writer(workdir: str, process_index: Optional[int] = None) -> interface.MetricWriter:
  """The run's MetricWriter: event file + metrics.jsonl on process 0 (`process_index`, default
  jax.process_index()), a writer of nothing on the others."""
  if process_index is None:
    import jax
    process_index = jax.process_index()
  if process_index != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      JsonlWriter(jsonl_path(workdir)),
      TensorboardXWriter(os.path.join(workdir, TENSORBOARD_DIR))])


class _Estimates:
  """Where ReportProgress writes its estimates (its `writer`): kept for the loop, which writes
  them with the step's metrics (one metrics.jsonl line per logged step, as before)."""

  def __init__(self):
    self.values: Dict[str, float] = {}

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self.values.update({k: float(v) for k, v in scalars.items()})


class ReportProgress(periodic_actions.ReportProgress):
  """clu's ReportProgress, triggered exactly at the steps the loop logs (every `every_steps`
  and at `num_train_steps`; no time trigger), adding to clu's `steps_per_sec` and `uptime`
  the `eta_seconds` to num_train_steps and `examples_per_sec` (x `batch_size`).

  Call it after every step (`progress(step)`, True when it reported) and once with the first
  step before the loop (which starts its clock); `values` holds the last report.
  """

  def __init__(self, *, num_train_steps: int, every_steps: int, batch_size: int):
    self._estimates = _Estimates()
    super().__init__(num_train_steps=num_train_steps, writer=self._estimates,
                     every_steps=every_steps, every_secs=None)
    self._batch_size = batch_size
    self.values: Dict[str, float] = {}

  def _apply(self, step: int, t: float):
    self._estimates.values = {}
    super()._apply(step, t)
    values = dict(self._estimates.values)
    rate = values["steps_per_sec"]
    values["eta_seconds"] = (self._num_train_steps - step) / rate
    values["examples_per_sec"] = rate * self._batch_size
    self.values = values
