"""Metric writing without TensorFlow: TensorBoard event files (tensorboardX) plus a JSONL log,
and PNG images beside them. (clu.metric_writers imports TensorFlow; see RECIPES.md.)"""
from __future__ import annotations

import json
import os
from typing import Dict

import jax
import numpy as np


class MetricWriter:
  """Writes on process 0 only; other processes get a no-op writer."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    if not self.active:
      return
    clean = {k: float(v) for k, v in values.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(dict(step=int(step), **clean)) + "\n")

  def image(self, step: int, name: str, grid_uint8: np.ndarray) -> None:
    if not self.active:
      return
    self._tb.add_image(name, grid_uint8, step, dataformats="HWC")

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
