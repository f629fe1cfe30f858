"""Reference statistics files in the ADM evaluation-suite .npz layout.

The reference batches of Dhariwal & Nichol 2021 (guided-diffusion `evaluations/`, e.g.
VIRTUAL_imagenet256_labeled.npz), which LlamaGen, VAR, MAR and most AR image papers score
against, hold:

  mu     [D]        mean of InceptionV3 pool3 features (D = 2048), the FID statistics.
  sigma  [D, D]     their covariance (ddof = 1).
  mu_s   [S]        optional: mean of the sFID spatial features (S = 2023).
  sigma_s [S, S]    optional: their covariance.
  arr_0  [M, H, W, 3] uint8 images, optional: precision/recall need per-sample features, and
                    the suite recomputes them from these images. pytorch-fid's .npz files
                    have only mu and sigma.

This module reads and writes that layout. `arr_0` may also hold precomputed activations
[M, D] (float), which saves re-running the network on every evaluation; `ReferenceStats.
arr_0_kind` tells which. `arr_0` is read lazily: ADM's ImageNet-256 file is 2 GB of images.

Shape legend: D pool3 dimension, S spatial dimension, M reference samples, H/W image side.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional

import numpy as np


@dataclasses.dataclass
class ReferenceStats:
  """Statistics from one reference .npz; see the module docstring for the fields."""
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: Optional[np.ndarray] = None
  sigma_s: Optional[np.ndarray] = None
  path: Optional[str] = None
  has_arr_0: bool = False

  @property
  def dim(self) -> int:
    return int(self.mu.shape[0])

  def arr_0(self) -> np.ndarray:
    """Loads the raw array (images or activations) on demand."""
    if not self.has_arr_0:
      raise KeyError(f"{self.path}: no 'arr_0' (raw images or activations) in this file; "
                     "precision/recall need per-sample reference features")
    with np.load(self.path, allow_pickle=False) as z:
      return z["arr_0"]

  @property
  def arr_0_kind(self) -> Optional[str]:
    """'images' (uint8 [M, H, W, C], ADM) or 'activations' (float [M, D]), or None."""
    if not self.has_arr_0:
      return None
    shape, _ = npz_member_header(self.path, "arr_0")
    return "images" if len(shape) == 4 else "activations"


def npz_member_header(path: str, name: str):
  """(shape, dtype) of one array in an .npz, read from its .npy header only (np.load with
  mmap_mode still decompresses and reads whole members of an .npz)."""
  with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
  return shape, dtype


def _check_pair(mu, sigma, path: str, mu_key: str, sigma_key: str):
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1:
    raise ValueError(f"{path}: {mu_key!r} must be a vector [D], got shape {mu.shape}")
  if sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{path}: {sigma_key!r} must be [D, D] with D={mu.shape[0]} from {mu_key!r}, "
                     f"got shape {sigma.shape}")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{path}: {mu_key!r} or {sigma_key!r} contains NaN or inf")
  return mu, sigma


def load_reference_stats(path: str) -> ReferenceStats:
  """Reads an ADM-suite (or pytorch-fid) reference .npz."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"reference statistics {path!r} not found (ADM reference batches: "
                            "https://github.com/openai/guided-diffusion/tree/main/evaluations)")
  with np.load(path, allow_pickle=False) as z:
    keys = set(z.files)
    if not {"mu", "sigma"} <= keys:
      raise KeyError(f"{path}: needs 'mu' and 'sigma' (has {sorted(keys)}); for a file with only "
                     "'arr_0', compute statistics from its images with the feature network")
    mu, sigma = _check_pair(z["mu"], z["sigma"], path, "mu", "sigma")
    mu_s = sigma_s = None
    if ("mu_s" in keys) != ("sigma_s" in keys):
      raise KeyError(f"{path}: 'mu_s' and 'sigma_s' must come together (has {sorted(keys)})")
    if "mu_s" in keys:
      mu_s, sigma_s = _check_pair(z["mu_s"], z["sigma_s"], path, "mu_s", "sigma_s")
    return ReferenceStats(mu, sigma, mu_s, sigma_s, path=path, has_arr_0="arr_0" in keys)


def save_reference_stats(path: str, mu, sigma, mu_s=None, sigma_s=None,
                         arr_0: Optional[np.ndarray] = None):
  """Writes mu/sigma (and optional sFID statistics and raw arr_0) in the ADM layout."""
  mu, sigma = _check_pair(mu, sigma, path, "mu", "sigma")
  out = {"mu": mu, "sigma": sigma}
  if (mu_s is None) != (sigma_s is None):
    raise ValueError("save_reference_stats: pass both mu_s and sigma_s, or neither")
  if mu_s is not None:
    out["mu_s"], out["sigma_s"] = _check_pair(mu_s, sigma_s, path, "mu_s", "sigma_s")
  if arr_0 is not None:
    arr_0 = np.asarray(arr_0)
    if arr_0.ndim not in (2, 4):
      raise ValueError(f"save_reference_stats: arr_0 must be images [M, H, W, C] or activations "
                       f"[M, D], got shape {arr_0.shape}")
    if arr_0.ndim == 2 and arr_0.shape[1] != mu.shape[0]:
      raise ValueError(f"save_reference_stats: arr_0 activations have D={arr_0.shape[1]} but mu "
                       f"has D={mu.shape[0]}")
    out["arr_0"] = arr_0
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # np.savez appends .npz to names without it; write through a handle to keep the exact path.
  with open(path, "wb") as f:
    np.savez(f, **out)
