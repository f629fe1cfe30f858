"""The speculative samplers' options as config fields (config.sampling / SamplingConfig /
`python -m arjax.sample --window ...`): they reach the sampler, out-of-range values name the
field in one line, and a sampler that does not take an option refuses it by name.

Tiny raster model: N = 5 tokens (pixel tokenizer, resolution 1, 5 channels), vocabulary 3.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import complete, validate
from arjax.sampling import (SamplingConfig, SJDSampler, SpeculativeOptions, build_sampler,
                            sampling_from_config)
from arjax.sampling.speculative import GSDSampler
from tests.helpers import tiny_config, tiny_model

N = 5


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config(tokenizer__levels=3, tokenizer__resolution=1, tokenizer__channels=N,
                       model__backbone__num_heads=2, mesh__data=1)
  complete(config)
  fm, _ = tiny_model(config)
  return fm, config, fm.initial_params()


def test_config_sampling_fields_reach_the_sampler(tiny):
  fm, config, params = tiny
  assert (config.sampling.window, config.sampling.gsd_radius,
          config.sampling.gsd_tol) == (0, 7, 0.15)     # completed with the declared defaults.
  c = config.copy_and_resolve_references()
  c.sampling.name, c.sampling.window, c.sampling.gsd_radius, c.sampling.gsd_tol = "gsd", 2, 3, 0.4
  sampler = build_sampler(fm, sampling_from_config(c), c)
  assert isinstance(sampler, GSDSampler)
  assert sampler.spec == SpeculativeOptions(window=2, gsd_radius=3, gsd_tol=0.4)
  # Window 0 (the default): min(16, N - 1); an override typed on the command line wins.
  c.sampling.name, c.sampling.gsd_radius, c.sampling.gsd_tol = "sjd", 7, 0.15  # sjd: no gsd_*.
  assert build_sampler(fm, sampling_from_config(c, window=0), c).spec.window == N - 1
  assert build_sampler(fm, sampling_from_config(c, window=3), c).spec.window == 3
  # The window set in the config draws what the same window given in code draws.
  labels, key = jnp.arange(6, dtype=jnp.int32) % 3, jax.random.key(4)
  got, st = SJDSampler(fm, SamplingConfig(window=2)).sample_with_stats(params, labels, key)
  want, st2 = SJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=2)
                         ).sample_with_stats(params, labels, key)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert int(st["passes"]) == int(st2["passes"])


def test_out_of_range_options_name_the_field(tiny):
  fm, config, _ = tiny
  for kw, msg in [(dict(window=-1), r"^window=-1; expected >= 0"),
                  (dict(window=1.5), r"^window=1.5; expected an integer"),
                  (dict(gsd_radius=-2), r"^gsd_radius=-2; expected >= 0$"),
                  (dict(gsd_tol=0.0), r"^gsd_tol=0.0; expected a value in \(0, 1\]$"),
                  (dict(gsd_tol=float("nan")), r"^gsd_tol=nan; expected a value in \(0, 1\]$")]:
    with pytest.raises(ValueError, match=msg):
      SamplingConfig(**kw).validate()
  with pytest.raises(ValueError, match=r"window=5; expected <= N - 1 = 4"):
    SJDSampler(fm, SamplingConfig(window=N))
  # In the config: checked with the other fields, named by their path.
  for field, value, msg in [
      ("window", -1, r"config.sampling.window=-1; expected an integer >= 0"),
      ("gsd_tol", 2.0, r"config.sampling.gsd_tol=2.0; expected .*1"),
      ("gsd_radius", -1, r"config.sampling.gsd_radius=-1; expected an integer >= 0")]:
    c = config.copy_and_resolve_references()
    c.sampling[field] = value
    with pytest.raises(ValueError, match=msg):
      complete(c)
      validate(c)
  c = config.copy_and_resolve_references()
  c.sampling.windows = 4
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['windows'\] for config.sampling"):
    complete(c)


def test_an_option_the_sampler_does_not_take_is_refused(tiny):
  fm, _, _ = tiny
  with pytest.raises(ValueError, match=r"sampling option\(s\) \['window'\] do not apply to "
                                       r"sampler 'sequential'"):
    build_sampler(fm, SamplingConfig(window=3))
  with pytest.raises(ValueError, match=r"\['gsd_radius'\] do not apply to sampler 'sjd'"):
    SJDSampler(fm, SamplingConfig(gsd_radius=2))
  with pytest.raises(ValueError, match=r"got speculative options twice"):
    SJDSampler(fm, SamplingConfig(window=2), options=SpeculativeOptions(window=3))
  assert GSDSampler(fm, SamplingConfig(window=2, gsd_radius=2, gsd_tol=0.5)).spec.gsd_radius == 2


def test_command_line_option_out_of_range_is_one_line(tmp_path):
  """Checked before anything is loaded: the workdir does not even exist."""
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  for flag, value, msg in [("--window", "-3", "error: --window=-3; expected >= 0"),
                           ("--gsd_tol", "1.5", "error: --gsd_tol=1.5; expected a value in")]:
    r = subprocess.run([sys.executable, "-m", "arjax.sample", "--workdir",
                        str(tmp_path / "none"), "--sampler", "gsd", flag, value],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith(msg), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
