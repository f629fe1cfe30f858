"""The engine's per-row pieces against the shared ones they re-implement per row.

Each row of `process_rows` / `sample_rows` must equal the categorical head's `process_logits`
/ `sample_tokens` called on that row alone with its own options and key (exactly: same floats,
same draws), and `row_scales` must equal the guidance schedule at each row's progress.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.heads.categorical import process_logits, sample_tokens
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.serve.engine import process_rows, row_keys, row_scales, sample_rows

V = 12
OPTIONS = list(itertools.product([0.0, 0.5, 1.7], [0, 1, 3, V, V + 5], [1.0, 0.9, 0.3]))


def test_process_and_sample_rows_equal_the_head_row_by_row():
  s = len(OPTIONS)  # 45 rows, every combination of temperature, top_k, top_p.
  logits = 3.0 * jax.random.normal(jax.random.key(0), (s, V))
  temperature = jnp.asarray([o[0] for o in OPTIONS], jnp.float32)
  top_k = jnp.asarray([o[1] for o in OPTIONS], jnp.int32)
  top_p = jnp.asarray([o[2] for o in OPTIONS], jnp.float32)
  seed = jnp.arange(s, dtype=jnp.int32) * 7
  image, index = jnp.arange(s, dtype=jnp.int32) % 3, jnp.arange(s, dtype=jnp.int32) % 5
  keys = row_keys(seed, image, index)
  processed = np.asarray(jax.jit(process_rows)(logits, temperature, top_k, top_p))
  draws = []
  for trial in range(2):  # several keys per row, so filtering is seen in the draws.
    k = jax.vmap(lambda key: jax.random.fold_in(key, trial))(keys)
    draws.append(np.asarray(jax.jit(sample_rows)(logits, k, temperature, top_k, top_p)))
  for i, (t, kk, p) in enumerate(OPTIONS):
    opts = dict(top_k=kk, top_p=p)
    if t > 0:
      np.testing.assert_array_equal(processed[i], np.asarray(
          process_logits(logits[i], temperature=t, **opts)), err_msg=str(OPTIONS[i]))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(seed[i])), int(image[i])),
                             int(index[i]))
    for trial in range(2):
      want = sample_tokens(jax.random.fold_in(key, trial), logits[i], temperature=t, **opts)
      assert draws[trial][i] == int(want), (OPTIONS[i], trial)
  # The filters did act: top-1 rows always draw the argmax.
  argmax = np.asarray(jnp.argmax(logits, -1))
  assert all(d[i] == argmax[i] for d in draws for i, o in enumerate(OPTIONS) if o[1] == 1)


@pytest.mark.parametrize("kind,by", [("constant", "tokens"), ("linear", "tokens"),
                                     ("linear", "steps"), ("power_cosine", "tokens")])
def test_row_scales_follow_the_guidance_schedule(kind, by):
  n = 49
  scale = jnp.asarray([1.0, 1.5, 3.0, 4.0, 0.0, 2.0], jnp.float32)
  index = jnp.asarray([0, 10, 48, 24, 5, 33], jnp.int32)
  got = np.asarray(row_scales(GuidanceSchedule(kind, 2.0, 2.5, by), scale, index, n))
  for i in range(scale.shape[0]):
    sched = GuidanceSchedule(kind, float(scale[i]), 2.5, by)
    want = float(sched.at(sched.progress(int(index[i]), n, int(index[i]), n)))
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6, err_msg=f"row {i}")
