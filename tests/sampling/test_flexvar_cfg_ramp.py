"""FlexVAR's guidance ramp (jiaosiyu1999/FlexVAR models/flexvar.py autoregressive_infer_cfg:
ratio = si / min(K - 1, 9), logits = (1 + cfg ratio) l_c - cfg ratio l_u), as the 'linear'
schedule by steps with steps_cap 9 and scale 1 + cfg, against a float64 numpy reference at
K = 6 (the MNIST list: VAR's ramp), 10 and 13 steps (past cfg after step 9, unclipped);
configs/imagenet256/flexvar.py sets it; a cap without by='steps' is refused by name.
"""
import os

import numpy as np
import pytest

from arjax.config import load_config
from arjax.sampling.guidance_schedule import GuidanceSchedule, from_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = 2.5


@pytest.mark.parametrize("num_steps", [6, 10, 13])
def test_ramp_matches_flexvar(num_steps):
  g = GuidanceSchedule("linear", 1.0 + CFG, by="steps", steps_cap=9)
  rng = np.random.default_rng(num_steps)
  for k in range(num_steps):
    lc, lu = rng.standard_normal((2, 3, 5, 7))
    t = CFG * k / min(num_steps - 1, 9)                      # FlexVAR's t, float64
    want = (1 + t) * lc - t * lu
    p = g.progress(0, 1, k, num_steps)
    got = np.asarray(g.combine(np.concatenate([lc, lu]).astype(np.float32), p))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  if num_steps == 13:  # the last step is guided past cfg: 12/9 cfg.
    assert float(g.at(g.progress(0, 1, 12, 13))) == pytest.approx(1 + CFG * 12 / 9, rel=1e-6)
  # VAR's ramp (no cap) stays the plain k / (K - 1), clipped at 1.
  var = GuidanceSchedule("linear", 1.0 + CFG, by="steps")
  assert float(var.at(var.progress(0, 1, num_steps - 1, num_steps))) == pytest.approx(1 + CFG)


def test_flexvar_config_sets_the_ramp():
  c = load_config(os.path.join(ROOT, "configs/imagenet256/flexvar.py:smoke"))
  g = from_config(c, c.eval.cfg_scale)
  assert (g.kind, g.by, g.steps_cap, g.scale) == ("linear", "steps", 9, 1.0 + 2.5)


def test_cap_needs_steps():
  with pytest.raises(ValueError, match=r"steps_cap=9 \(eval.cfg_steps_cap\); expected 0, or > 0 "
                                       r"with by='steps' \(got by='tokens'\)"):
    GuidanceSchedule("linear", 2.0, steps_cap=9)
