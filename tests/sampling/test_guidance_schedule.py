"""Guidance schedules against their formulas (numpy float64), and the combine step against the
plain CFG formula u + s (c - u) with a per-sample scale."""
import math

import numpy as np
import pytest

from arjax.sampling.guidance_schedule import GuidanceSchedule


def test_scales_match_the_formulas():
  p = np.linspace(0, 1, 9)
  np.testing.assert_allclose(GuidanceSchedule("constant", 3.0).at(p), np.full(9, 3.0))
  np.testing.assert_allclose(GuidanceSchedule("linear", 4.0).at(p), 1 + 3 * p, rtol=1e-6)
  want = 1 + (5.0 - 1) * (1 - np.cos(math.pi * p ** 2.5)) / 2  # RAR's power-cosine.
  np.testing.assert_allclose(GuidanceSchedule("power_cosine", 5.0, power=2.5).at(p), want,
                             rtol=1e-5, atol=1e-6)


def test_progress_by_tokens_and_by_steps():
  g = GuidanceSchedule("linear", 2.0, by="steps")
  assert float(g.progress(0, 16, 3, 7)) == pytest.approx(0.5)
  assert float(GuidanceSchedule("linear", 2.0).progress(4, 16, 0, 7)) == pytest.approx(0.25)


def test_combine_uses_a_scale_per_sample():
  rng = np.random.default_rng(0)
  cond, uncond = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
  logits = np.concatenate([cond, uncond]).astype(np.float32)
  g = GuidanceSchedule("linear", 3.0)
  progress = np.array([0.0, 1.0])
  got = np.asarray(g.combine(logits, progress))
  s = (1 + 2 * progress)[:, None, None]
  np.testing.assert_allclose(got, uncond + s * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_bad_schedule_is_named():
  with pytest.raises(ValueError, match="kind='cubic'"):
    GuidanceSchedule("cubic", 2.0)
  with pytest.raises(ValueError, match="by='time'"):
    GuidanceSchedule("linear", 2.0, by="time")
