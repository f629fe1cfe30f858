"""`arjax.inspect --mesh`: the train step compiled ahead of time for a mesh, from shapes alone,
with its per-device memory and whether it fits the HBM size."""
import json
import subprocess
import sys

import jax
import pytest

from arjax.config import load_config
from arjax.inspect import inspect_config, mesh_from
from tests.scale.conftest import RUN_CONFIG, ROOT, subprocess_env


def test_inspect_compiles_for_a_mesh_in_process(compile_cache):
  config = load_config(RUN_CONFIG)
  # The same program as the CLI test's (2 devices): one compile for both, through the cache.
  mesh = mesh_from({"data": 1, "fsdp": 2, "tensor": 1})
  out = inspect_config(config, mesh=mesh, hbm_gib=1e-4)
  assert out["params"] == 14_016 and out["forward_per_token"] > 2 * out["params"]
  assert out["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and out["memory"]["devices"] == 2
  state, compiled = out["memory"]["state"], out["memory"]["compiled"]
  assert state["params"] < 4 * out["params"] * 0.75  # FSDP over 2 halves the big matrices.
  assert compiled["argument"] >= state["params"] + state["opt_state"]
  assert compiled["temp"] > 0
  assert compiled["peak"] == (compiled["argument"] + compiled["output"] - compiled["alias"]
                              + compiled["temp"])
  assert out["fits"] is False  # 0.1 MiB of HBM is too little...
  assert inspect_config(config, mesh=mesh, hbm_gib=1.0)["fits"] is True  # ...1 GiB is plenty.
  # Without compiling: the same exact state bytes, no compiled figures, no verdict.
  quick = inspect_config(config, mesh=mesh, hbm_gib=1.0, compile=False)
  assert quick["memory"]["state"] == state and quick["memory"]["compiled"] == {}
  assert quick["fits"] is None and quick["memory"]["compile_seconds"] is None
  with pytest.raises(ValueError, match=r"needs 16 devices but 8 are available"):
    mesh_from({"data": 16, "fsdp": 1, "tensor": 1})


def test_inspect_cli_starts_the_devices_the_mesh_needs(compile_cache):
  proc = subprocess.run([sys.executable, "-m", "arjax.inspect", "--config", RUN_CONFIG,
                         "--mesh", "fsdp=2", "--hbm_gib", "80", "--json"], cwd=ROOT,
                        env=subprocess_env(compile_cache), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["memory"]["devices"] == 2 and out["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
  assert out["fits"] is True and out["hbm_gib"] == 80
  # Exactly the bytes the shardings give (params: 'embed' dims halved).
  config = load_config(RUN_CONFIG)
  from arjax.models import build_model
  from arjax.core.functional import FunctionalModel
  fm = FunctionalModel.abstract(lambda: build_model(config, seed=0))
  expected = sum(4 * leaf.size // (2 if "embed" in (a.axes or ()) else 1) for leaf, a in zip(
      jax.tree.leaves(fm.abstract_params),
      jax.tree.leaves(fm.axes, is_leaf=lambda a: hasattr(a, "axes"))))
  assert out["memory"]["state"]["params"] == expected
  bad = subprocess.run([sys.executable, "-m", "arjax.inspect", "--config", RUN_CONFIG,
                        "--mesh", "data=2,pipe=2"], cwd=ROOT, env=subprocess_env(compile_cache),
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "--mesh item 'pipe=2'" in bad.stderr
