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
