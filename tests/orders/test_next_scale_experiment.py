"""experiments/next_scale.py without training (the full pipeline is `--smoke`, minutes of
compiling on a CPU): the section from results JSONs (`--report_only`) has one row per model
with the measured passes, images/s ratios and KV-cache bytes, the budget-bar verdict, and
rewriting it keeps another section of docs/next_scale.md (the '## Models' one) and hand notes."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _experiment():
  spec = importlib.util.spec_from_file_location("next_scale_experiment",
                                                os.path.join(ROOT, "experiments", "next_scale.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _row(name, steps, acc, fd, grid):
  return {"row": name, "config": "c", "model": name, "params": 1000, "train_steps": steps,
          "batch_size": 64, "test_bits_per_token": 1.5, "num_samples": 500, "cfg_scale": 2.0,
          "temperature": 1.0, "fd": fd, "class_accuracy": acc, "precision": 0.5,
          "recall": 0.5, "sample_seconds": 1.0, "train_seconds": 120.0, "grid": grid,
          "progress": [{"step": steps, "class_accuracy": acc, "fd": fd, "num_samples": 200,
                        "test_bits_per_dim": 1.5}]}


def _table(text):
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("| model |"))
  out = []
  for l in lines[start + 2:]:
    if not l.startswith("|"):
      break
    out.append([c.strip() for c in l.strip("|").split("|")])
  return out


def test_report_only_section_rows_claims_and_merge(tmp_path):
  mod = _experiment()
  assert mod.rows_of()[:2] == ["var", "raster"]
  w = tmp_path / "w"
  res = w / "results"
  res.mkdir(parents=True)
  out = tmp_path / "docs" / "next_scale.md"
  out.parent.mkdir()
  (res / "var.json").write_text(json.dumps(_row("var", 3000, 0.9, 20.0, str(tmp_path / "v.png"))))
  (res / "raster.json").write_text(json.dumps(_row("raster", 3000, 0.7, 30.0,
                                                   str(tmp_path / "r.png"))))
  speed = {"batches": [1, 20], "repeats": 3, "rows": {
      "var": {"train_steps": 3000, "passes_per_image": 6, "tokens_per_image": 104,
              "kv_cache_bytes_per_image": 425984, "kv_cache_rows_per_image": 2,
              "images_per_second": {"1": 40.0, "20": 400.0}},
      "raster": {"train_steps": 3000, "passes_per_image": 104, "tokens_per_image": 104,
                 "kv_cache_bytes_per_image": 425984, "kv_cache_rows_per_image": 2,
                 "images_per_second": {"1": 4.0, "20": 50.0}}}}
  (res / "speed.json").write_text(json.dumps(speed))
  out.write_text("# Next-scale prediction\n\n## Models\n\nkept text\n\n## Experiment\n\nSTALE TEXT\n\n"
                 + mod.NOTES_MARKER + "\nmy notes\n")
  argv = ["--report_only", "--workdir", str(w), "--out", str(out), "--rows", "var,raster",
          "--load", "load average 1.0"]
  assert mod.main(argv) == 0
  text = out.read_text()
  assert text.count("## Experiment") == 1 and "## Models\n\nkept text" in text
  assert "STALE TEXT" not in text.split("## Experiment")[1].split(mod.NOTES_MARKER)[0]
  assert text.rstrip().endswith(mod.NOTES_MARKER + "\nmy notes")
  rows = _table(text)
  assert [r[0] for r in rows] == ["VAR (next-scale)", "raster AR (same tokens)"]
  assert rows[0][6] == "6" and rows[1][6] == "104"
  assert rows[0][7] == "40.0 (10.0x raster)" and rows[0][8] == "400.0 (8.0x raster)"
  assert rows[0][9].startswith("425,984 B") and "x2 (CFG)" in rows[0][9]
  assert "| 0.700 at 3000 steps | not yet met |" in text  # raster below the 80 % bar.
  assert "6 passes vs raster's 104 (17.3x fewer) | holds" in text
  # A second rewrite is idempotent.
  assert mod.main(argv) == 0
  assert out.read_text() == text


def test_a_fresh_workdir_reports_the_rows_kept_next_to_the_docs(tmp_path):
  """A finished row's result is also kept as docs/next_scale/results/ROW.json (`finish_row`):
  with a workdir that lacks it (another machine), the section still has the row, its grid read
  from the docs folder."""
  mod = _experiment()
  out = tmp_path / "docs" / "next_scale.md"
  kept = tmp_path / "docs" / "next_scale" / "results"
  kept.mkdir(parents=True)
  (kept / "var.json").write_text(json.dumps(_row("var", 1500, 0.95, 20.0, "/elsewhere/var.png")))
  argv = ["--report_only", "--workdir", str(tmp_path / "fresh"), "--out", str(out), "--rows",
          "var,raster", "--load", "load average 1.0"]
  assert mod.main(argv) == 0
  text = out.read_text()
  rows = _table(text)
  assert rows[0][:6] == ["VAR (next-scale)", "1,000", "1500", "1.5000", "20.00", "0.950"]
  assert "[grid](next_scale/var.png)" in rows[0][-1]
  assert rows[1][0] == "raster AR (same tokens)" and "not run: no results yet" in rows[1][-1]
