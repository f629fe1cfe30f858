"""Image grids and plots written next to the metrics."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np


def make_grid(images: np.ndarray, ncol: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [rows*(H+pad)+pad, ncol*(W+pad)+pad, C] (row-major)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"make_grid expects uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  n, h, w, c = images.shape
  rows = -(-n // ncol)
  grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_grid(images: np.ndarray, path: str, ncol: int, scale: int = 1) -> str:
  """Writes a PNG grid (optionally upscaled by `scale`, nearest) and returns its path."""
  from PIL import Image
  grid = make_grid(images, ncol)
  if scale > 1:
    grid = grid.repeat(scale, 0).repeat(scale, 1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  mode = "L" if grid.shape[-1] == 1 else "RGB"
  Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(path)
  return path


def plot_curves(jsonl_path: str, out_path: str, keys=("loss", "bits_per_dim"),
                title: Optional[str] = None) -> str:
  """Plots metric curves from the JSONL log next to it."""
  import json
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  series = {k: ([], []) for k in keys}
  with open(jsonl_path) as f:
    for line in f:
      rec = json.loads(line)
      for k in keys:
        if k in rec:
          series[k][0].append(rec["step"])
          series[k][1].append(rec[k])
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
  axes = np.atleast_1d(axes)
  for ax, k in zip(axes, keys):
    ax.plot(*series[k])
    ax.set_xlabel("step")
    ax.set_title(k)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_path, dpi=80)
  plt.close(fig)
  return out_path
