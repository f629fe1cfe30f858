"""configs/continuous/compare.py (experiments/continuous.py's rows): every row builds from
shapes alone at its smoke, the rows share the budget (steps, batch, optimiser) and the backbone
size (4 blocks of width 96; MAR, ARINAR and xAR 2 encoder + 2 decoder), the diffusion rows clamp
their x_0 predictions at sampling to a bound of the latents, and bad arguments name the field."""
import os

import pytest

from arjax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/continuous/compare.py"
ROWS = ("discrete", "flow", "diffusion", "gmm", "mar", "xar", "arinar")


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
  monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("row", ROWS)
def test_every_row_smoke_inspects(row):
  from arjax.inspect import inspect_config
  out = inspect_config(load_config(f"{CONFIG}:row={row},smoke"))
  assert out["params"] > 0 and sum(out["params_by_module"].values()) == out["params"]


def test_rows_share_budget_and_backbone():
  cs = {r: load_config(f"{CONFIG}:row={r},steps=700") for r in ROWS}
  for r, c in cs.items():
    t = c.train
    assert (t.num_steps, t.batch_size, t.lr, t.schedule, t.warmup_steps) == (
        700, 32, 2e-3, "cosine", 70), r
    b = c.model.backbone
    blocks = b.num_layers + (c.model.decoder_layers if r in ("mar", "xar", "arinar") else 0)
    assert (blocks, b.dim) == (4, 96), r
    assert c.eval.cfg_scale == 2.0
  assert cs["discrete"].tokenizer.vocab_size == 512
  assert all(cs[r].tokenizer.latent_dim == 4 for r in ROWS if r != "discrete")
  assert [cs[r].model.head.name for r in ROWS] == [
      "categorical", "flow", "diffusion", "gmm", "diffusion", "flow", "arinar"]
  # MAR's head is the causal diffusion row's head.
  for k in ("width", "depth", "diffusion_batch_mul", "num_sampling_steps", "clip_denoised"):
    assert cs["mar"].model.head[k] == cs["diffusion"].model.head[k], k
  assert cs["mar"].order.num_steps == 49 and cs["arinar"].order.num_steps == 49
  assert cs["arinar"].model.name == "mar" and cs["xar"].model.name == "xar"
  # The clamp bounds the cached latents (max |x| 1.571 over the 60,000 training images; the
  # 1000-step runs' diffusion rows sample noise without it: docs/continuous.md).
  assert cs["diffusion"].model.head.clip_denoised == 2.0


@pytest.mark.parametrize("arg,message", [("row=vq", r"row='vq'; expected one of"),
                                         ("steps=0", r"steps=0; expected an integer >= 1")])
def test_bad_arguments_name_the_field(arg, message):
  with pytest.raises(ValueError, match=message):
    load_config(f"{CONFIG}:{arg}")


def test_the_table_links_grids_written_for_another_out(tmp_path):
  """experiments/continuous.py's table written elsewhere than the run's --out (the workdir's
  table, then `--report_only --out docs/continuous.md`) copies each grid next to it and links
  the copy: no link into the workdir."""
  import argparse
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "continuous_experiment", os.path.join(ROOT, "experiments", "continuous.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  grid = tmp_path / "run" / "continuous" / "discrete.png"
  grid.parent.mkdir(parents=True)
  grid.write_bytes(b"png bytes")
  entry = dict(name="discrete", grid=str(grid), ar_steps=49, fd=50.0, class_accuracy=0.9,
               precision=0.8, recall=0.4, samples_per_s=10.0)
  results = {"discrete": dict(params=1, train_steps=10, train_seconds=60.0, head_steps=1,
                              batch_size=32, entries=[entry])}
  args = argparse.Namespace(smoke=False, workdir="W", steps=10, lr=2e-3, num_samples=500,
                            batch_size=100, per_class=8)
  out = tmp_path / "docs" / "continuous.md"
  out.parent.mkdir()
  mod.write_table(str(out), ["discrete"], results, {}, args, {"hw": "cpu"}, None)
  text = out.read_text()
  assert "[grid](continuous/discrete.png)" in text and "](continuous/discrete.png)" in text
  assert "run/" not in text
  assert (tmp_path / "docs" / "continuous" / "discrete.png").read_bytes() == b"png bytes"
