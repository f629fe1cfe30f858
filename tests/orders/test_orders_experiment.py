"""experiments/orders.py in smoke mode: trains two orders for a couple of steps through the real
trainer, samples, scores with the offline evaluator, times sampling and writes the table with one
row per order and a real-data calibration row; a re-run trains nothing (resumable)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _experiment():
  spec = importlib.util.spec_from_file_location("orders_experiment",
                                                os.path.join(ROOT, "experiments", "orders.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _table(text):
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("| order |"))
  rows = []
  for l in lines[start + 2:]:
    if not l.startswith("|"):
      break
    rows.append([c.strip() for c in l.strip("|").split("|")])
  return rows


def test_orders_experiment_smoke_writes_one_row_per_order(tmp_path, monkeypatch):
  mod = _experiment()
  assert mod.discover_orders()[0] == "raster"
  assert {"raster", "random", "randar", "lpd", "par", "nar", "masked"} <= set(
      mod.discover_orders())
  out = tmp_path / "orders.md"
  argv = ["--smoke", "--orders", "raster,masked", "--workdir", str(tmp_path / "w"),
          "--out", str(out), "--num_samples", "136", "--sample_batch", "136",
          "--grid_per_class", "2", "--speed_batch", "16", "--speed_rounds", "1"]
  assert mod.main(argv) == 0
  rows = _table(out.read_text())
  assert [r[0] for r in rows] == ["raster (LlamaGen)", "MaskGIT (masked, cosine)",
                                  "*real training images* (calibration)"]
  raster, masked, real = rows
  assert all(len(r) == 10 for r in rows)
  assert float(real[4]) < float(raster[4]) and float(real[5]) > 0.5  # real digits: low FD.
  assert raster[2] == masked[2] == "2"                    # equal training budget.
  assert int(raster[1].replace(",", "")) > 0
  assert 0 < float(raster[3]) < 3.5                       # bits/dim of 8 levels: below ~3.
  assert masked[3].startswith("—")                        # no NLL for the masked order.
  assert float(raster[4]) > 0 and 0 <= float(masked[5]) <= 1
  assert (raster[7], masked[7]) == ("196", "8")           # sampling steps.
  assert raster[8].startswith("1.00x") and masked[8].endswith("/s)")
  for r in (raster, masked):
    png = r[9][r[9].index("(") + 1:-1]
    assert os.path.isfile(os.path.join(tmp_path, png)), png
  assert "MaskGIT with 8 steps" in out.read_text()

  # Resumable: results JSON exist, so a re-run trains nothing and rewrites the same rows.
  def no_training(*a, **k):
    raise AssertionError("an order with results was trained again")
  monkeypatch.setattr(mod, "run_order", no_training)
  assert mod.main(argv[:-4] + ["--speed_rounds", "0"]) == 0
  again = _table(out.read_text())
  assert [r[:8] for r in again] == [r[:8] for r in rows]
