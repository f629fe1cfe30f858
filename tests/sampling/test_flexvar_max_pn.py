"""FlexVAR's per-side sampling rule (jiaosiyu1999/FlexVAR models/flexvar.py
autoregressive_infer_cfg, read at 04462cb):

    t = cfg * ratio if pn <= max_pn else cfg                  (ratio = si / min(K - 1, 9))
    top_k = 1 if pn > max_pn or pn not in [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32]

as model 'flexvar's `max_pn` (16) and `sampled_sides` (that list) in the 'next_scale' sampler.

- `sampling_rule` against a transcription of the two conditions for sides 1..40;
- on the tiny FlexVAR of tests/models/test_flexvar.py sampled at [1, 2, 3, 4, 5, 6] (cfg 2.5,
  the capped linear ramp, temperature 2, seed 0) with max_pn = 4 and sampled_sides [1, 2, 4]:
  every cell of sides 5 and 6 is the argmax of the float64 guided logits (1 + cfg) l_c - cfg l_u
  of the full forward at the sampled tokens, every cell of side 3 the argmax at the ramp's
  t = cfg 2 / 5; in both the other t picks other cells somewhere (the test tells them apart),
  and sides 1, 2, 4 are not all argmax (they are drawn).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from tests.models.test_flexvar import build, flex_config, tok  # noqa: F401 (fixture)

RELEASED = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32]
SCALES = [1, 2, 3, 4, 5, 6]
CFG = 2.5


def test_rule_matches_the_released_conditions(tok):  # noqa: F811
  fm, _ = build(tok, flex_config())
  model = fm.bind(fm.abstract_params)
  assert (model.max_pn, list(model.sampled_sides)) == (16, RELEASED)
  for side in range(1, 41):
    greedy = side > 16 or side not in RELEASED
    assert model.sampling_rule(side) == (greedy, side > 16), side
  fm2, _ = build(tok, flex_config("model.max_pn=3", "model.sampled_sides=[]"))
  m2 = fm2.bind(fm2.abstract_params)
  assert [m2.sampling_rule(s) for s in (1, 3, 4, 7)] == [(False, False), (False, False),
                                                         (True, True), (True, True)]
  with pytest.raises(ValueError, match=r"model.max_pn=0; expected an integer >= 1"):
    build(tok, flex_config("model.max_pn=0"))


def test_greedy_sides_are_the_argmax_of_the_guided_logits(tok):  # noqa: F811
  # One model for both branches: side 3 is outside the sides (top-1 at the ramp's t), 5 and 6
  # are above max_pn (top-1 at t = cfg), 1, 2 and 4 are drawn.
  max_pn, sides = 4, [1, 2, 4]
  fm, params = build(tok, flex_config(f"model.max_pn={max_pn}", f"model.sampled_sides={sides}"))
  labels = np.array([2, 6])
  guidance = GuidanceSchedule("linear", 1.0 + CFG, by="steps", steps_cap=9)
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0 + CFG, temperature=2.0),
                          guidance=guidance)
  tokens = np.asarray(sampler.sample_tokens(params, labels, jax.random.key(0), scales=SCALES))
  # Reference: the full forward at the sampled tokens (scale k sees scales < k only), float64.
  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y, scales=tuple(SCALES)).logits)
  lc = np.asarray(f(params, jnp.asarray(tokens), jnp.asarray(labels)), np.float64)
  lu = np.asarray(f(params, jnp.asarray(tokens), jnp.full((2,), 10)), np.float64)
  k_last = len(SCALES) - 1
  start, differs, drawn_not_argmax = 0, {True: 0, False: 0}, 0
  for k, s in enumerate(SCALES):
    sl = slice(start, start + s * s)
    start += s * s
    ramp = CFG * k / min(k_last, 9)
    full = s > max_pn
    t, other = (CFG, ramp) if full else (ramp, CFG)
    pick = lambda t: np.argmax((1 + t) * lc[:, sl] - t * lu[:, sl], -1)
    if full or s not in sides:
      np.testing.assert_array_equal(tokens[:, sl], pick(t), err_msg=f"side {s}")
      differs[full] += int((pick(other) != pick(t)).sum())
    else:
      drawn_not_argmax += int((tokens[:, sl] != pick(t)).sum())
  # Both t rules are told apart somewhere, and the other sides are drawn, not argmax.
  assert differs[True] > 0 and differs[False] > 0 and drawn_not_argmax > 0, (
      differs, drawn_not_argmax)
