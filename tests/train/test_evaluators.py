"""Evaluators by name with their own intervals (arjax.train.evaluators), in tiny training runs:
two evaluators with different intervals run at exactly their steps (each run writes one
metrics.jsonl line or one grid file, counted), clu's ReportProgress metrics appear at the logged
steps in metrics.jsonl and the event file, a config without evaluators gets its model kind's
(text: bits/char and samples), the sample-quality evaluator compiles once per run, and a bad
evaluator entry is one line naming `eval.evaluators.NAME`."""
import glob
import json
import os
import re

import jax
import jax.monitoring
import ml_collections
import numpy as np
import pytest

from arjax import cli
from arjax.config import load_config
from arjax.train.evaluators import (EVALUATORS, SampleQualityFields, build_evaluators,
                                    sample_quality)
from arjax.train.loop import Experiment, train_and_evaluate
from arjax.train.writer import create_writer
from tests.helpers import tiny_config
from tests.train.test_writer import read_events, values_by_tag

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _steps_with(lines, key):
  return [r["step"] for r in lines if key in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evaluators"))
  c = tiny_config(train__num_steps=6, train__log_every=2, train__checkpoint_every=6,
                  train__eval_every=1000)
  c.eval.evaluators = ml_collections.ConfigDict({"bits_per_dim": {"every": 2},
                                                 "sample_grid": {"every": 3}})
  results = train_and_evaluate(c, workdir)
  return workdir, results


def test_two_evaluators_run_at_exactly_their_steps(run):
  workdir, results = run
  lines = _jsonl(workdir)
  # bits_per_dim every 2 (2, 4) and at the end (6): one line per run, never twice at a step.
  assert _steps_with(lines, "test_bits_per_dim") == [2, 4, 6]
  # sample_grid every 3 (3) and at the end (6): one PNG and one event-file image per run.
  grids = sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, "images",
                                                                      "samples_*.png")))
  assert grids == ["samples_0000003.png", "samples_0000006.png"]
  tags = values_by_tag(read_events(os.path.join(workdir, "tensorboard")))
  assert [s for s, _ in tags["samples"]] == [3, 6]
  assert [s for s, _ in tags["test_bits_per_dim"]] == [2, 4, 6]
  # The final evaluation's results, merged (final_metrics.json): both evaluators'.
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  assert final == json.loads(json.dumps(results))
  assert set(final) == {"step", "test_bits_per_dim", "test_nll", "test_tokens", "sample_grid"}
  assert final["step"] == 6 and final["test_tokens"] == 16 * 49
  assert np.isclose(final["test_bits_per_dim"], final["test_nll"] / np.log(2))


def test_report_progress_metrics_at_logged_steps(run):
  workdir, _ = run
  train = [r for r in _jsonl(workdir) if "loss" in r]
  assert [r["step"] for r in train] == [2, 4, 6]   # one line per log_every, as before.
  for r in train:
    assert r["steps_per_sec"] > 0 and r["uptime"] > 0
    assert np.isclose(r["examples_per_sec"], 8 * r["steps_per_sec"])
    assert np.isclose(r["eta_seconds"], (6 - r["step"]) / r["steps_per_sec"])
  assert [r["uptime"] for r in train] == sorted(r["uptime"] for r in train)
  tags = values_by_tag(read_events(os.path.join(workdir, "tensorboard")))
  for key in ("loss", "steps_per_sec", "eta_seconds"):
    assert [s for s, _ in tags[key]] == [2, 4, 6], key


def test_defaults_are_the_model_kinds_every_eval_every():
  c = tiny_config(train__eval_every=7)
  got = [(s.name, s.every) for s in build_evaluators(c, "generator")]
  assert got == [("bits_per_dim", 7), ("sample_grid", 7)]
  assert [s.name for s in build_evaluators(c, "tokenizer")] == ["reconstruction"]
  c.eval.evaluators = ml_collections.ConfigDict({"sample_grid": {}})  # every 0: eval_every.
  assert [(s.name, s.every) for s in build_evaluators(c, "generator")] == [("sample_grid", 7)]


def test_text_model_defaults_bits_per_char_and_samples(tmp_path):
  c = load_config("configs/text/char_ar.py:smoke", ["train.eval_every=2"])
  train_and_evaluate(c, str(tmp_path))
  lines = _jsonl(str(tmp_path))
  assert _steps_with(lines, "test_bits_per_char") == [2, 4]
  bpc = [r["test_bits_per_char"] for r in lines if "test_bits_per_char" in r]
  assert all(0 < b < np.log2(c.tokenizer.get("vocab_size", 256) or 256) + 1 for b in bpc)
  files = sorted(os.listdir(tmp_path / "samples"))
  assert files == ["text_0000002.txt", "text_0000004.txt"]
  assert len(open(tmp_path / "samples" / files[-1]).read().split("\n\n----------\n\n")) == 2


def test_sample_quality_compiles_once_and_is_deterministic(tmp_path):
  exp = Experiment(tiny_config())
  state = exp.init_state()
  writer = create_writer(str(tmp_path), process_index=0)
  fields = SampleQualityFields(every=5, num_samples=129, batch_size=64)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event) if event == COMPILE_EVENT else None)
  try:
    first = sample_quality(exp, state, writer, str(tmp_path), 5, fields)
    n_first = len(compiles)
    second = sample_quality(exp, state, writer, str(tmp_path), 10, fields)
    n_second = len(compiles) - n_first
  finally:
    jax.monitoring.clear_event_listeners()
    writer.close()
  assert n_first > 0, "the listener saw no compilation: the check would be vacuous"
  assert n_second == 0, f"the second evaluation compiled {n_second} programs"
  assert first == second  # same seed (config.seed) and parameters: the same samples.
  assert first["sample_fd"] >= 0 and 0 <= first["sample_class_accuracy"] <= 1
  assert 0 <= first["sample_precision"] <= 1 and 0 <= first["sample_recall"] <= 1
  assert _steps_with(_jsonl(str(tmp_path)), "sample_fd") == [5, 10]


_CONFIG = """
import ml_collections
from arjax.config import base_config

def get_config(arg=None):
  c = base_config()
  c.eval.batch_size = 64
  c.eval.evaluators = ml_collections.ConfigDict({ENTRIES})
  return c
"""


@pytest.mark.parametrize("entries, expected", [
    ('{"no_such": {"every": 2}}', r"unknown evaluator 'no_such' \(config field "
                                  r"'eval.evaluators.no_such'\)"),
    ('{"bits_per_dim": {"every": -5}}', r"config.eval.evaluators.bits_per_dim.every=-5; "
                                        r"expected an integer >= 1"),
    ('{"bits_per_dim": {"every": 2.5}}', r"config.eval.evaluators.bits_per_dim.every=2.5"),
    ('{"sample_grid": {"evry": 2}}', r"unknown field\(s\) \['evry'\] for evaluator "
                                     r"'sample_grid' \(config.eval.evaluators.sample_grid\)"),
    ('{"sample_quality": {"num_samples": 10}}',
     r"config.eval.evaluators.sample_quality.num_samples=10; expected more than"),
    ('{"reconstruction": {"every": 2}}', r"config.eval.evaluators.reconstruction: evaluates "
                                         r"tokenizer models; this model is evaluated as "
                                         r"'generator'"),
])
def test_bad_evaluator_entry_is_one_line(tmp_path, capsys, entries, expected):
  from arjax.train.__main__ import main
  path = tmp_path / "bad.py"
  path.write_text(_CONFIG.replace("{ENTRIES}", entries))
  code = cli.run(main, ["--config", str(path), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert re.search(expected, err[0]), err[0]
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")  # nothing trained.


def test_registry_is_the_only_one():
  """EVALUATIONS (by model kind) is folded into EVALUATORS."""
  import arjax.train.evaluation as evaluation
  assert not hasattr(evaluation, "EVALUATIONS")
  assert {"bits_per_dim", "sample_grid", "sample_quality", "bits_per_char", "text_samples",
          "reconstruction"} <= set(EVALUATORS.names())
