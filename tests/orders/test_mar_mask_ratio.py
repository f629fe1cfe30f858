"""MAR's training mask-ratio sampler against scipy's truncated normal on [0.7, 1] (mean 1, std
0.25) by a KS test at seed 0, with a wrong std rejected by the same test (the test has power),
and the masked-token count ceil(N * ratio)."""
import jax
import numpy as np
import pytest
from scipy import stats

from arjax.orders.schedules import mar_mask_ratio, mar_num_masked


def test_mask_ratio_is_the_truncated_normal_on_0p7_to_1():
  r = np.asarray(mar_mask_ratio(jax.random.key(0), (20000,)), np.float64)
  assert r.min() >= 0.7 and r.max() <= 1.0
  law = stats.truncnorm((0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
  assert stats.kstest(r, law.cdf).pvalue > 0.01
  wrong = stats.truncnorm((0.7 - 1.0) / 0.15, 0.0, loc=1.0, scale=0.15)  # std 0.15 instead.
  assert stats.kstest(r, wrong.cdf).pvalue < 1e-6
  np.testing.assert_allclose(r.mean(), law.mean(), atol=5 * law.std() / np.sqrt(len(r)))


def test_num_masked_is_the_ceiling_and_bad_bounds_fail():
  r = np.array([0.7, 0.7001, 0.95, 1.0], np.float32)
  np.testing.assert_array_equal(np.asarray(mar_num_masked(r, 256)), [180, 180, 244, 256])
  np.testing.assert_array_equal(mar_num_masked(r, 256, xp=np), [180, 180, 244, 256])
  with pytest.raises(ValueError, match="minimum=1.0"):
    mar_mask_ratio(jax.random.key(0), (), minimum=1.0)
