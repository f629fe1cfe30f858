"""A user's mistake at any entry point is one line `error: ...` naming what was wrong, exit 2.

Table-driven over the entry points (arjax.train, inspect, sample, evaluate, convert, tokenize,
launch): each bad input is run through `arjax.cli.run`, as `python -m` runs it, in this process
(each fails before anything is compiled). Asserted: the exit code, a single line on stderr
starting with 'error:', and the field, option or file named in it. Two subprocess cases check
the real `python -m` path and that `--debug` shows the traceback instead.
"""
import importlib
import os
import subprocess
import sys

import pytest

from arjax import cli

QUICK = "configs/quickstart.py:smoke"
NO_WORKDIR = "/nonexistent/arjax_workdir"

# (entry point module, argv, text the one line must contain). '{tmp}' is a fresh directory;
# '{bad_json}' a workdir whose config.json is truncated; '{no_getconfig}' a .py without
# get_config.
CASES = [
    # arjax.train: flags, the config file, overrides, and every field's range.
    ("arjax.train.__main__", ["--workdir", "{tmp}"], "--config"),
    ("arjax.train.__main__", ["--config", QUICK], "--workdir"),
    ("arjax.train.__main__", ["--config", "configs/nope.py", "--workdir", "{tmp}"], "nope.py"),
    ("arjax.train.__main__", ["--config", "{no_getconfig}", "--workdir", "{tmp}"],
     "get_config"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.foo=1"],
     "train.foo"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.lr"],
     "--config.train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.lr=abc"],
     "train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.lr=-1"],
     "train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.lr=nan"],
     "train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.lr=inf"],
     "train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.num_steps=-5"], "train.num_steps"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.batch_size=0"], "train.batch_size"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.batch_size=1.5"], "train.batch_size"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.warmup_steps=-1"], "train.warmup_steps"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.grad_clip=-1.0"], "train.grad_clip"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.class_dropout=1.5"], "model.class_dropout"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.log_every=0"], "train.log_every"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.eval_every=0"], "train.eval_every"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.checkpoint_every=-3"], "train.checkpoint_every"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.keep_checkpoints=0"], "train.keep_checkpoints"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.eval.num_examples=0"], "eval.num_examples"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train.b2=1.0"],
     "train.b2"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.ema_decay=1.5"], "train.ema_decay"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.end_lr_ratio=2.0"], "train.end_lr_ratio"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.grad_accum_steps=3"], "train.grad_accum_steps"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.max_nonfinite_steps=0"],
     "train.max_nonfinite_steps"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.eval.top_p=0.0"],
     "eval.top_p"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.eval.cfg_scale=-1.0"], "eval.cfg_scale"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.eval.temperature=nan"], "eval.temperature"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.eval.top_k=-1"],
     "eval.top_k"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.mesh.fsdp=0"],
     "mesh.fsdp"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.backbone.num_heads=3"], "num_heads"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.backbone.num_layers=0"],
     "model.backbone.num_layers"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.backbone.resid_dropout=2.0"],
     "model.backbone.resid_dropout"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.name=nope"], "nope"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.model.head.name=nope"], "nope"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.data.worker_count=-1"], "data.worker_count"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.seed=1.5"],
     "seed"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--unknown_flag"],
     "--unknown_flag"),
    # config_flags' own mistakes: an unknown section, a bool/int/list of the wrong form, an
    # override before --config or without it, a whole section overridden by a scalar, a missing
    # value in the space form, a renamed part's undeclared field.
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.trian.lr=1"],
     "trian.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.async_checkpointing=maybe"],
     "config field 'train.async_checkpointing' expects bool"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.train.num_steps", "many"], "'train.num_steps' expects int"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}",
                              "--config.sharding_rules=3"], "'sharding_rules' expects list"),
    ("arjax.train.__main__", ["--config.train.lr=0.1", "--config", QUICK, "--workdir", "{tmp}"],
     "--config.train.lr"),
    ("arjax.train.__main__", ["--workdir", "{tmp}", "--config.train.lr=0.1"],
     "--config.train.lr"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.train=1"],
     "'train' expects a section"),
    ("arjax.train.__main__", ["--config", QUICK, "--workdir", "{tmp}", "--config.order.name=lpd",
                              "--config.order.anneal_start=0.5"], "order.anneal_start"),
    # arjax.inspect
    ("arjax.inspect", ["--config", "configs/nope.py"], "nope.py"),
    ("arjax.inspect", ["--config", QUICK, "--config.train.lr=nan"], "train.lr"),
    ("arjax.inspect", ["--config", QUICK, "--config.model.backbone.dim=0"],
     "model.backbone.dim"),
    ("arjax.inspect", ["--config", QUICK, "--config.model.backbone.dim=wide"],
     "'model.backbone.dim' expects int"),
    ("arjax.inspect", ["--config", QUICK, "--config.model.backbone.widht=64"],
     "model.backbone.widht"),
    ("arjax.inspect", ["--config", QUICK, "train.lr=0.1"], "train.lr=0.1"),
    ("arjax.inspect", ["--config", QUICK, "--hbm_gib", "abc"], "--hbm_gib"),
    # arjax.sample: options are checked before the workdir is read.
    ("arjax.sample", ["--workdir", NO_WORKDIR], "checkpoint"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--num", "0"], "--num"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--num", "abc"], "--num"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--cfg_scale", "nan"], "cfg_scale"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--cfg_scale", "-1"], "cfg_scale"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--temperature", "nan"], "temperature"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--temperature", "-1"], "temperature"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--top_p", "1.5"], "top_p"),
    ("arjax.sample", ["--workdir", NO_WORKDIR, "--top_k", "-2"], "top_k"),
    ("arjax.sample", ["--num", "4"], "--workdir"),
    # arjax.evaluate
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR], "config.json"),
    ("arjax.evaluate.__main__", ["--workdir", "{bad_json}"], "config.json"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--metrics", "nope"], "nope"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--metrics", "fd", "--num_samples",
                                 "10"], "--num_samples"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--metrics", "fid",
                                 "--inception_weights", "/nonexistent/w.npz"],
     "/nonexistent/w.npz"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--batch_size", "0"], "--batch_size"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--temperature", "inf"],
     "temperature"),
    ("arjax.evaluate.__main__", ["--workdir", NO_WORKDIR, "--top_p", "0"], "top_p"),
    # arjax.convert
    ("arjax.convert.__main__", ["nope", "--checkpoint", "x.pt", "--workdir", "{tmp}"], "nope"),
    ("arjax.convert.__main__", ["llamagen", "--checkpoint", "/nonexistent/c.pt", "--workdir",
                                "{tmp}"], "/nonexistent/c.pt"),
    ("arjax.convert.__main__", ["llamagen", "--checkpoint", "x.pt"], "--workdir"),
    ("arjax.convert.__main__", ["llamagen", "--checkpoint", "x.pt", "--workdir", "{tmp}",
                                "train.lr=0.1"], "train.lr=0.1"),
    # arjax.tokenize
    ("arjax.tokenize", ["--tokenizer_workdir", NO_WORKDIR, "--data", "mnist", "--out",
                        "{tmp}/t_{{split}}.ar"], NO_WORKDIR),
    ("arjax.tokenize", ["--data", "mnist", "--out", "x"], "--tokenizer_workdir"),
    # arjax.launch
    ("arjax.launch", ["--num_processes", "2"], "no command"),
    ("arjax.launch", ["--num_processes", "0", "--", "true"], "--num_processes"),
    ("arjax.launch", ["--num_processes", "2", "--"], "no command"),
    ("arjax.launch", ["--num_processes", "two", "--", "true"], "--num_processes"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  bad_json = root / "bad_json"
  bad_json.mkdir()
  (bad_json / "config.json").write_text('{"model": {"name": "raster_ar"')
  no_getconfig = root / "no_getconfig.py"
  no_getconfig.write_text("X = 1\n")
  return {"bad_json": str(bad_json), "no_getconfig": str(no_getconfig)}


def test_the_table_is_large_enough():
  assert len(CASES) >= 50
  assert len({m for m, _, _ in CASES}) == 7  # every entry point


@pytest.mark.parametrize("module,argv,named", CASES,
                         ids=[f"{m.split('.')[1]}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_bad_input_is_one_line_naming_it(module, argv, named, paths, tmp_path, capsys):
  fill = dict(paths, tmp=str(tmp_path / "w"))
  argv = [a.format(**fill) for a in argv]
  named = named.format(**fill)
  main = importlib.import_module(module).main
  try:
    code = cli.run(main, argv)
  except SystemExit as e:  # argparse's own exits (ArgumentParser.error) go through SystemExit.
    code = e.code
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2, (argv, err)
  assert len(lines) == 1, (argv, err)
  assert lines[0].startswith("error: "), lines[0]
  assert named in lines[0], (named, lines[0])
  assert not os.path.exists(fill["tmp"]), "a refused run must not create its workdir"


def _python_m(args, env=None):
  env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                        timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_python_m_prints_one_line_and_debug_shows_the_traceback(tmp_path):
  args = ["arjax.train", "--config", QUICK, "--workdir", str(tmp_path / "w"),
          "--config.train.lr=nan"]
  plain = _python_m(args)
  assert plain.returncode == 2, plain.stderr
  lines = [l for l in plain.stderr.splitlines() if l.strip()]
  assert lines == ["error: config.train.lr=nan; expected a finite number"], plain.stderr
  debug = _python_m(args + ["--debug"])
  assert debug.returncode != 0
  assert "Traceback (most recent call last)" in debug.stderr
  assert "config.train.lr=nan" in debug.stderr


def markdown_table() -> str:
  """The table of docs/reliability.md: every case run as the test runs it, its message as
  printed (TMP: a temporary directory). `python -m tests.test_bad_input` prints it."""
  import contextlib
  import io
  import tempfile
  root = tempfile.mkdtemp()
  os.makedirs(f"{root}/bad_json")
  with open(f"{root}/bad_json/config.json", "w") as f:
    f.write('{"model": {"name": "raster_ar"')
  with open(f"{root}/no_getconfig.py", "w") as f:
    f.write("X = 1\n")
  rows = ["| entry point | arguments | exit | message |", "|---|---|---|---|"]
  for i, (module, argv, _) in enumerate(CASES):
    fill = dict(tmp=f"{root}/w{i}", bad_json=f"{root}/bad_json",
                no_getconfig=f"{root}/no_getconfig.py")
    argv = [a.format(**fill) for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      try:
        code = cli.run(importlib.import_module(module).main, argv)
      except SystemExit as e:
        code = e.code
    line = err.getvalue().strip().replace(root, "TMP")
    rows.append(f"| `{module.replace('.__main__', '')}` | `{' '.join(argv).replace(root, 'TMP')}`"
                f" | {code} | `{line}` |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(markdown_table())
