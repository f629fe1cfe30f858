"""Sampling options: the sampler's name, the options every head's `sample` may take and the
speculative samplers' options.

The head options live in the experiment config as `config.eval.{cfg_scale, temperature, top_k,
top_p}` (with the guidance schedule `eval.cfg_schedule / cfg_power / cfg_by / cfg_steps_cap`
where a config sets them); the sampler's name is `config.sampling.name` ('auto': the model's
`default_sampler()`), and the speculative samplers' options ('sjd', 'mc_sjd', 'gsd': arjax.sampling.speculative) are
`config.sampling.{window, gsd_radius, gsd_tol}` (`python -m arjax.sample --sampler sjd
--window 8`). A speculative option set away from its default for a sampler that does not take
it is refused by name, never ignored.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

from arjax.registry import ranged

# The speculative samplers' options: (field, default); 'sjd' / 'mc_sjd' take the window,
# 'gsd' also gsd_radius and gsd_tol, 'continuous_sjd' the window and max_tries.
SPECULATIVE_FIELDS: Tuple[Tuple[str, Any], ...] = (
    ("window", 0), ("gsd_radius", 7), ("gsd_tol", 0.15), ("max_tries", 100))


@dataclasses.dataclass(frozen=True)
class SamplingFields:
  """`config.sampling`: the sampler's `name` ('auto' or a registered sampler; the head options
  are config.eval's) and the speculative samplers' options; any other field is refused at
  start, and out-of-range values name the field
  (`config.sampling.window=-1; expected an integer >= 0`)."""
  window: int = ranged(0, lo=0, integer=True)        # W drafts per pass (0: min(16, N - 1)).
  gsd_radius: int = ranged(7, lo=0, integer=True)    # gsd: group of tokens within this many ranks.
  gsd_tol: float = ranged(0.15, lo=0.0, hi=1.0, lo_open=True)  # gsd: ... and this probability.
  max_tries: int = ranged(100, lo=1, integer=True)   # continuous_sjd: residual proposals.


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  cfg_scale: float = 1.0   # classifier-free guidance scale (1: none).
  temperature: float = 1.0  # the head's temperature (0: greedy / the mode).
  top_k: int = 0           # categorical heads: top-k filtering (0: off).
  top_p: float = 1.0       # categorical heads: nucleus filtering (1: off).
  name: str = "auto"       # sampler registry name; auto: the model's default sampler.
  window: int = 0          # speculative: drafts verified per pass (0: min(16, N - 1)).
  gsd_radius: int = 7      # gsd: the group holds tokens within this many ranks of the draft ...
  gsd_tol: float = 0.15    # gsd: ... whose probability differs from the draft's by < this.
  max_tries: int = 100     # continuous_sjd: proposals of the residual's acceptance-rejection.

  def validate(self):
    for field in ("cfg_scale", "temperature", "top_p"):
      if not math.isfinite(getattr(self, field)):  # NaN compares False with every bound.
        raise ValueError(f"{field}={getattr(self, field)}; expected a finite number")
    if self.cfg_scale < 0:
      raise ValueError(f"cfg_scale={self.cfg_scale}; expected >= 0 (1: no guidance)")
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}; expected >= 0")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k}; expected >= 0")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p}; expected a value in (0, 1]")
    for field, lo in (("window", 0), ("gsd_radius", 0), ("max_tries", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}={value!r}; expected an integer")
      if value < lo:
        raise ValueError(f"{field}={value}; expected >= {lo}"
                         + (" (0: min(16, N - 1))" if field == "window" else ""))
    if not (math.isfinite(self.gsd_tol) and 0.0 < self.gsd_tol <= 1.0):
      raise ValueError(f"gsd_tol={self.gsd_tol}; expected a value in (0, 1]")

  def speculative_set(self) -> Tuple[str, ...]:
    """The speculative options set away from their defaults."""
    return tuple(f for f, d in SPECULATIVE_FIELDS if getattr(self, f) != d)

  def head_options(self) -> Dict[str, Any]:
    """The head-specific options set away from their defaults (categorical: top_k, top_p)."""
    out = {}
    if self.top_k != 0:
      out["top_k"] = self.top_k
    if self.top_p != 1.0:
      out["top_p"] = self.top_p
    return out


def sampling_from_config(config, **overrides) -> SamplingConfig:
  """SamplingConfig from config.eval (head options), config.sampling (name, speculative
  options), with overrides (None: not given)."""
  e = config.eval
  s = config.get("sampling", {})
  get = lambda k, d: overrides[k] if overrides.get(k) is not None else e.get(k, d)
  spec = {f: overrides[f] if overrides.get(f) is not None else s.get(f, d)
          for f, d in SPECULATIVE_FIELDS}
  name = overrides.get("name") or s.get("name", "auto")
  return SamplingConfig(cfg_scale=float(get("cfg_scale", 1.0)),
                        temperature=float(get("temperature", 1.0)),
                        top_k=int(get("top_k", 0)), top_p=float(get("top_p", 1.0)), name=name,
                        window=spec["window"], gsd_radius=spec["gsd_radius"],
                        gsd_tol=float(spec["gsd_tol"]), max_tries=spec["max_tries"])
