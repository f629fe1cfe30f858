"""`python -m arjax.evaluate --metrics fd,...` and `python -m arjax.evaluate.reference` end to end
on one quickstart smoke run (trained once for the module)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(*args, devices=8):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(popen, args, check=True):
  try:
    stdout, stderr = popen.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    popen.kill()
    raise
  proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def run(*args, devices=8, check=True):
  return finish(start(*args, devices=devices), args, check)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("evalrun") / "q")
  run("arjax.train", "--config", "configs/quickstart.py:smoke", "--workdir", wd)
  return wd


def _evaluate(wd, tmp, devices, name):
  """Starts `arjax.evaluate` on `devices` fake CPU devices; -> a function that waits for it and
  returns (its JSON, its saved features)."""
  out, feats = str(tmp / f"{name}.json"), str(tmp / f"{name}_feats.npz")
  args = ["arjax.evaluate", "--workdir", wd, "--metrics", "fd,prec_rec", "--num_samples", "160",
          "--batch_size", "80", "--seed", "1", "--out", out, "--save_features", feats]
  popen = start(*args, devices=devices)

  def wait():
    finish(popen, args)
    return json.load(open(out)), np.load(feats)
  wait.popen = popen
  return wait


def test_fd_json_markdown_and_device_invariance(workdir, tmp_path):
  # The two runs are independent processes (each mostly imports and compiles, on one core):
  # started together they overlap. The 1-device run reads a copy of the run, so that each
  # appends its markdown row to its own eval.md.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  wait8 = _evaluate(workdir, tmp_path, 8, "d8")
  wait1 = _evaluate(copy, tmp_path, 1, "d1")
  try:
    ev8, f8 = wait8()
  except BaseException:
    wait1.popen.kill()
    raise
  for k in ("fd", "class_accuracy", "precision", "recall"):
    assert np.isfinite(ev8[k]), k
  assert ev8["step"] == 6 and ev8["num_samples"] == 160
  # A 6-step model draws noise-like digits: far from the data, but FD is a finite distance.
  assert 1.0 < ev8["fd"] < 1e4
  assert 0.0 <= ev8["class_accuracy"] <= 1.0
  assert 0.0 <= ev8["precision"] <= 1.0 and 0.0 <= ev8["recall"] <= 1.0
  assert "not Inception" in ev8["fd_space"]
  md = open(os.path.join(workdir, "eval.md")).read().splitlines()
  assert md[0].startswith("| step | N |") and md[-1].startswith("| 6 | 160 |")
  # Same seed and batch size on 1 device: the same samples, so the same feature statistics.
  ev1, f1 = wait1()
  np.testing.assert_allclose(f1["mu"], f8["mu"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(f1["sigma"], f8["sigma"], rtol=0, atol=1e-5)
  assert ev1["fd"] == pytest.approx(ev8["fd"], rel=1e-6)
  assert ev1["class_accuracy"] == ev8["class_accuracy"]


@pytest.mark.parametrize("args,needle", [
    (["--metrics", "fd,fidd"], "unknown metric(s) ['fidd']"),
    (["--metrics", "fd", "--num_samples", "100"], "--num_samples 100 <= 128"),
    (["--metrics", "fid", "--reference", "r.npz"], "need --inception_weights"),
    (["--metrics", "is", "--inception_weights", "/nonexistent/pt_inception.pth"],
     "/nonexistent/pt_inception.pth"),
])
def test_argument_errors(args, needle):
  proc = run("arjax.evaluate", "--workdir", "/nonexistent", *args, check=False)
  assert proc.returncode != 0 and needle in proc.stderr, proc.stderr


def test_reference_dim_mismatch(workdir, tmp_path):
  from arjax.evaluate.reference_stats import save_reference_stats
  bad = str(tmp_path / "bad.npz")
  save_reference_stats(bad, np.zeros(5), np.eye(5))
  proc = run("arjax.evaluate", "--workdir", workdir, "--metrics", "fd", "--num_samples", "160",
             "--reference", bad, check=False)
  assert proc.returncode != 0 and "D=5" in proc.stderr and "D=128" in proc.stderr, proc.stderr


def test_reference_round_trip_and_separation(tmp_path):
  from arjax.data.idx import load_bundled
  from arjax.evaluate import metrics
  from arjax.evaluate.reference import reference_features, write_reference
  from arjax.evaluate.reference_stats import load_reference_stats
  train, _ = load_bundled("mnist", "train")
  ref_feats = reference_features("mnist", "train", images=train[:10000])
  path = str(tmp_path / "train.npz")
  write_reference(path, ref_feats)
  ref = load_reference_stats(path)
  mu, sigma = metrics.feature_statistics(ref_feats)
  np.testing.assert_array_equal(ref.mu, mu)
  np.testing.assert_array_equal(ref.sigma, sigma)
  assert ref.arr_0_kind == "activations" and ref.arr_0().shape == (10000, 128)
  test, _ = load_bundled("mnist", "test")
  rng = np.random.default_rng(0)
  noisy = np.clip(test.astype(np.int32) + rng.normal(0, 64, test.shape), 0, 255).astype(np.uint8)
  fd = lambda im: metrics.frechet_distance(
      *metrics.feature_statistics(reference_features("mnist", "test", images=im)), ref.mu, ref.sigma)
  fd_real, fd_noisy = fd(test), fd(noisy)
  assert fd_real < 3.0 and fd_noisy > 20 * fd_real, (fd_real, fd_noisy)


def test_reference_cli(tmp_path):
  out = str(tmp_path / "t.npz")
  res = json.loads(run("arjax.evaluate.reference", "--data", "mnist", "--split", "test",
                       "--size", "14", "--levels", "8", "--out", out).stdout.strip())
  assert res == {"out": out, "num": 10000, "dim": 128}
  proc = run("arjax.evaluate.reference", "--data", "mnist", "--features", "inception",
             "--inception_weights", "/nonexistent/w.pth", "--out", out, check=False)
  assert proc.returncode == 2 and "/nonexistent/w.pth" in proc.stderr


def test_inception_metrics_use_the_right_features_and_reference_fields(tmp_path):
  # The network is replaced by a fixed feature map (Inception itself is tested in
  # test_inception.py); this checks which features and which reference fields each metric uses,
  # against float64 numpy/scipy computations.
  import scipy.linalg
  from arjax.evaluate import sample_metrics as sm
  rng = np.random.default_rng(0)
  d, s_dim, n = 6, 5, 400

  def extractor(images):
    x = images.reshape(len(images), -1)[:, :d + s_dim].astype(np.float64) / 255.0
    return {"pool3": x[:, :d], "spatial": x[:, d:], "logits": x[:, :4] * 3.0}

  samples = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  real_images = rng.integers(40, 256, (n, 4, 4, 3), dtype=np.uint8)
  real = extractor(real_images)
  ref = tmp_path / "ref.npz"
  np.savez(ref, mu=real["pool3"].mean(0), sigma=np.cov(real["pool3"], rowvar=False),
           mu_s=real["spatial"].mean(0), sigma_s=np.cov(real["spatial"], rowvar=False),
           arr_0=real_images)
  got = sm.inception_scores(samples, None, str(ref), ["fid", "sfid", "is", "iprec_rec"],
                            extractor=extractor)

  def fd(a, b):
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real))

  fake = extractor(samples)
  assert got["fid"] == pytest.approx(fd(fake["pool3"], real["pool3"]), rel=1e-6)
  assert got["sfid"] == pytest.approx(fd(fake["spatial"], real["spatial"]), rel=1e-6)
  assert got["sfid"] != pytest.approx(got["fid"], rel=1e-3)

  def radii(x):  # distance to the 3rd nearest other point (k = 3, self excluded)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(dist, 1)[:, 3]

  def covered(points, manifold):
    dist = np.sqrt(((points[:, None] - manifold[None]) ** 2).sum(-1))
    return float((dist <= radii(manifold)[None]).any(1).mean())

  assert got["inception_precision"] == pytest.approx(covered(fake["pool3"], real["pool3"]), abs=1e-9)
  assert got["inception_recall"] == pytest.approx(covered(real["pool3"], fake["pool3"]), abs=1e-9)
  # Missing reference fields are named.
  np.savez(tmp_path / "bare.npz", mu=real["pool3"].mean(0), sigma=np.cov(real["pool3"], rowvar=False))
  with pytest.raises(KeyError, match="mu_s"):
    sm.inception_scores(samples, None, str(tmp_path / "bare.npz"), ["sfid"], extractor=extractor)
  with pytest.raises(KeyError, match="arr_0"):
    sm.inception_scores(samples, None, str(tmp_path / "bare.npz"), ["iprec_rec"],
                        extractor=extractor)
