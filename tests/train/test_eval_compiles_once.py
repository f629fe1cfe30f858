"""Evaluation compiles once per run: the second evaluation of an Experiment (bits/dim and the
sample grid) compiles nothing (counted with jax.monitoring's backend-compile events)."""
import jax
import jax.monitoring

from arjax.train.loop import Experiment
from tests.helpers import tiny_config

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_second_evaluation_compiles_nothing():
  exp = Experiment(tiny_config())
  state = exp.init_state()
  params = exp.eval_params(state)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event) if event == COMPILE_EVENT else None)
  try:
    exp.bits_per_dim(params, "test", 16)
    exp.sample_grid(params, jax.random.key(0))
    first = len(compiles)
    exp.bits_per_dim(params, "test", 16)
    exp.sample_grid(params, jax.random.key(1))
    second = len(compiles) - first
  finally:
    jax.monitoring.clear_event_listeners()
  assert first > 0, "the listener saw no compilation at all: the check would be vacuous"
  assert second == 0, f"the second evaluation compiled {second} programs"
