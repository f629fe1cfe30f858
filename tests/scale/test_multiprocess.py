"""Several processes: `python -m arjax.launch` runs 2 processes x 4 fake CPU devices as one
jax.distributed job, which trains like 1 process x 8 devices, reads one data shard per process,
writes each checkpoint once, and leaves checkpoints that restore on another process count."""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker

from arjax import data, parallel
from arjax.config import load_config
from arjax.launch import launch, process_env
from tests.scale.conftest import RUN_CONFIG, ROOT, losses, restore, subprocess_env, train_cmd


def test_two_processes_train_like_one(reference, compile_cache, tmp_path):
  workdir = str(tmp_path / "mp")
  proc = subprocess.run(
      [sys.executable, "-m", "arjax.launch", "--num_processes", "2", "--devices_per_process",
       "4", "--port", str(portpicker.pick_unused_port()), "--timeout", "500", "--",
       *train_cmd(workdir, "--config.train.checkpoint_every=3")],
      cwd=ROOT, env=subprocess_env(compile_cache), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
  assert "jax.distributed: process 1 of 2" in proc.stdout  # both processes joined one job.

  # Same losses as 1 process x 8 devices. Not bitwise: gloo's cross-process all-reduce adds in
  # another order (differences seen: ~1e-7 relative, on 2 of 6 steps).
  got = losses(workdir)
  assert sorted(got) == sorted(reference["losses"]) == list(range(1, 7))
  for step, values in got.items():
    assert len(values) == 1, f"step {step} logged {len(values)} times: only process 0 writes"
    np.testing.assert_allclose(values[0], reference["losses"][step], rtol=1e-5, err_msg=step)
  same = sum(got[s][0] == reference["losses"][s] for s in got)
  worst = max(abs(got[s][0] / reference["losses"][s] - 1) for s in got)
  print(f"2x4 vs 1x8: {same} of {len(got)} losses bit-identical, max relative difference "
        f"{worst:.1e}")
  final = {"test_bits_per_dim": reference["results"]["test_bits_per_dim"],
           "test_tokens": reference["results"]["test_tokens"]}
  mp_final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert mp_final["test_tokens"] == final["test_tokens"]  # the same 16 test images, globally.
  np.testing.assert_allclose(mp_final["test_bits_per_dim"], final["test_bits_per_dim"], rtol=1e-5)

  # Checkpoints written once, collectively: one directory per step, complete, no leftovers.
  entries = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert entries == ["3", "6"], entries

  # The 2-process checkpoint restores on 1 process, onto 8 devices and onto 1 device.
  config = reference["config"]
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1), devices)
    state = restore(workdir, config, mesh=mesh)
    assert int(state.step) == 6
    leaf = state.params["token_embed"]["embedding"]
    assert len(leaf.sharding.device_set) == len(devices)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(state.params), reference["params"])


def test_each_process_reads_its_own_shard():
  config = load_config(RUN_CONFIG)
  one = data.make_iterator(config.data, global_batch_size=8, seed=3, process_index=0,
                           process_count=1)
  halves = [data.make_iterator(config.data, global_batch_size=8, seed=3, process_index=i,
                               process_count=2) for i in range(2)]
  for _ in range(3):
    full = next(one)
    a, b = next(halves[0]), next(halves[1])
    assert len(a["label"]) == len(b["label"]) == 4
    for k in full:  # process i holds rows [4i, 4i+4) of the same global batch.
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), full[k])
    assert not np.array_equal(a["image"], b["image"])


def test_launch_sets_the_environment_and_stops_on_failure(tmp_path):
  env = process_env({"XLA_FLAGS": "--foo --xla_force_host_platform_device_count=8"},
                    process_id=1, num_processes=3, port=1234, devices_per_process=4,
                    platform="cpu")
  assert env["ARJAX_COORDINATOR"] == "127.0.0.1:1234"
  assert (env["ARJAX_NUM_PROCESSES"], env["ARJAX_PROCESS_ID"]) == ("3", "1")
  assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
  assert env["JAX_PLATFORMS"] == "cpu"
  # Process 1 fails at once; process 0 would run for a minute: it is stopped, status 3 returned.
  script = ("import os, sys, time\n"
            "if os.environ['ARJAX_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(60)\n")
  t0 = time.time()
  status = launch([sys.executable, "-c", script], num_processes=2, port=1)
  assert status == 3
  assert time.time() - t0 < 30
  assert launch([sys.executable, "-c", "pass"], num_processes=2, port=1) == 0
