"""benchmarks/device_check.sh runs end to end in its CPU smoke mode (tiny sizes, Pallas in the
interpreter) and writes one JSON holding every hardware figure's field, so the script is known to
work before a GPU is lent."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIELDS = {
    "kernels": ["cases", "all_ok"],
    "attention": ["rows"],
    "train_step": ["params", "scan_layers", "remat", "step_ms", "tokens_per_s", "tflops",
                   "peak_tflops", "mfu", "compile_s", "temp_bytes"],
    "decode": ["weight_bytes", "ms_per_token", "floor_ms_per_token", "latency_over_floor"],
}
CASE_FIELDS = ["case", "pass", "dtype", "Lq", "Lk", "max_abs_err", "tol", "ok"]
ATTENTION_FIELDS = ["L", "K", "mask", "pass", "pallas TF/s", "xla TF/s", "cudnn TF/s"]


def test_smoke_run_writes_every_field(tmp_path):
  out = tmp_path / "dc.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), str(out),
                         "--smoke", "--peak_tflops", "1.0", "--hbm_gbps", "10"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["mode"] == "smoke" and report["platform"] == "cpu"
  for name, fields in FIELDS.items():
    assert report["sections"][name]["error"] is None, report["sections"][name]
    missing = [f for f in fields if f not in report[name]]
    assert not missing, (name, missing)
  cases = report["kernels"]["cases"]
  assert {c["dtype"] for c in cases} == {"float32", "bfloat16"}
  assert {c["pass"] for c in cases} == {"fwd", "bwd"}
  assert any(c["Lq"] % 16 for c in cases)  # a length off the tile.
  for c in cases:
    assert all(f in c for f in CASE_FIELDS) and c["ok"], c
  rows = report["attention"]["rows"]
  assert rows and all(all(f in r for f in ATTENTION_FIELDS) for r in rows)
  # Peaks were given, so the derived figures are numbers, not nulls.
  assert 0 < report["train_step"]["mfu"] and report["train_step"]["remat"] != "none"
  assert report["decode"]["latency_over_floor"] > 0
