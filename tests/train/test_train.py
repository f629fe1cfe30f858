"""The trainer: resume equals an uninterrupted run, restore onto other meshes, sharded steps equal
the single-device step, clear errors for bad input."""
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from arjax import parallel
from arjax.config import load_config
from arjax.tokenizers.pixel import PixelTokenizer
from arjax.train import loop
from arjax.train.checkpoint import CheckpointMismatchError, Checkpointer
from arjax.train.loop import Experiment, train_and_evaluate
from tests.helpers import persistent_compile_cache, tiny_config


def _no_grid(**overrides):
  """tiny_config evaluated by test bits/dim alone: no test here reads the sample grid (a
  sampler compile per run), and evaluators run after the last checkpoint and losses are
  written, so they cannot change what is compared."""
  c = tiny_config(**overrides)
  c.eval.evaluators = ml_collections.ConfigDict({"bits_per_dim": {}})
  return c


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """The module's runs build the same programs again (each Experiment jits afresh): compiled
  once, loaded from this cache after (tests.helpers.persistent_compile_cache)."""
  with persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as path:
    yield path


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A workdir of tiny_config trained for 2 steps on all 8 devices (checkpoint at step 2),
  shared read-only: a test that trains on from it works on a copy."""
  workdir = str(tmp_path_factory.mktemp("two_steps") / "run")
  train_and_evaluate(_no_grid(train__num_steps=2), workdir)
  return workdir


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _final_params(workdir, config):
  exp = Experiment(config)
  ckpt = Checkpointer(workdir, async_save=False)
  abstract, shardings = exp.abstract_state()
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  state, _, _ = ckpt.restore(ckpt.latest_step(), target)
  ckpt.close()
  return jax.device_get(state.params)


def test_resume_gives_identical_losses_and_params(two_steps, tmp_path):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  train_and_evaluate(_no_grid(train__num_steps=4), full)
  shutil.copytree(two_steps, split)  # a run of 2 steps, resumed below to 4.
  # A stray, incomplete save must never be picked up on resume.
  os.makedirs(os.path.join(split, "checkpoints", "3.orbax-checkpoint-tmp-12345"))
  train_and_evaluate(_no_grid(train__num_steps=4), split)
  a, b = _losses(full), _losses(split)
  assert a[3] == b[3] and a[4] == b[4]
  pa = _final_params(full, tiny_config())
  pb = _final_params(split, tiny_config())
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


LAYOUTS = {"data8": dict(data=8, fsdp=1, tensor=1), "fsdp8": dict(data=1, fsdp=8, tensor=1),
           "dp4_tp2": dict(data=4, fsdp=1, tensor=2), "fsdp4_tp2": dict(data=1, fsdp=4, tensor=2)}


def _run_steps(config, mesh, batches):
  exp = Experiment(config, mesh=mesh)
  _, shardings = exp.abstract_state()
  state = exp.init_state()
  step = exp.jit_train_step(shardings)
  losses = []
  for b in batches:
    state, m = step(state, exp.to_global(b))
    losses.append(float(m.compute()["loss"]))
  return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def batches():
  from arjax import data
  it = data.make_iterator(tiny_config().data, split="train", global_batch_size=8, seed=0,
                          shuffle=True, num_epochs=None)
  return [next(it) for _ in range(2)]


def test_sharded_train_steps_equal_single_device(batches):
  # One block (five meshes, each compiling an init and a step): every kind of parameter and
  # activation sharding (embedding, attention, MLP, head) is there once.
  config = tiny_config(model__backbone__num_layers=1)
  ref_losses, ref_params, _ = _run_steps(config, parallel.make_mesh(config.mesh,
                                                                    jax.devices()[:1]), batches)
  for name, layout in LAYOUTS.items():
    mesh = parallel.make_mesh(layout, jax.devices())
    losses, params, state = _run_steps(config, mesh, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, err_msg=name),
                 params, ref_params)
    if layout["fsdp"] > 1:  # FSDP really shards the parameters.
      k = state.params["backbone"]["blocks"][0]["mlp"]["w1"]["kernel"]
      assert k.addressable_shards[0].data.shape[0] == k.shape[0] // layout["fsdp"]


def test_restore_onto_other_mesh_shapes(two_steps):
  workdir = two_steps  # saved from a mesh of all 8 devices (mesh.data=-1).
  assert jax.device_count() == 8
  saved = None
  for n in (8, 4, 1):
    cfg = tiny_config(mesh__data=n)
    exp = Experiment(cfg, mesh=parallel.make_mesh(cfg.mesh, jax.devices()[:n]))
    abstract, shardings = exp.abstract_state()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    ckpt = Checkpointer(workdir, async_save=False)
    state, _, _ = ckpt.restore(ckpt.latest_step(), target)
    ckpt.close()
    leaf = state.params["token_embed"]["embedding"]
    assert len(leaf.sharding.device_set) == n
    host = jax.device_get(state)
    if saved is None:
      saved = host
    jax.tree.map(np.testing.assert_array_equal, host.params, saved.params)
    jax.tree.map(np.testing.assert_array_equal, host.opt_state, saved.opt_state)


def test_checkpoint_of_another_model_shape_is_refused(two_steps, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(two_steps, workdir)
  with pytest.raises(CheckpointMismatchError, match=r"token_embed/embedding: checkpoint \[4, 32\] "
                                                    r"float32 vs model \[4, 64\] float32"):
    train_and_evaluate(tiny_config(train__num_steps=4, model__backbone__dim=64), workdir)


def test_bad_config_and_inputs_fail_at_start(tmp_path):
  config = load_config("configs/quickstart.py:smoke")
  with pytest.raises(KeyError, match="train.nonexistent"):
    load_config("configs/quickstart.py:smoke", ["train.nonexistent=1"])
  with pytest.raises(ValueError, match="train.lr.*expects float"):
    load_config("configs/quickstart.py:smoke", ["train.lr=abc"])
  with pytest.raises(ValueError, match="unknown config argument 'sise'"):
    load_config("configs/imagenet256/llamagen.py:sise=L")
  with pytest.raises(KeyError, match="unknown model 'nope'"):
    load_config("configs/quickstart.py:smoke", ["model.name=nope"]) and None
    Experiment(load_config("configs/quickstart.py:smoke", ["model.name=nope"]))
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="not writable"):
    loop.check_workdir(str(blocker / "sub"))
  with pytest.raises(ValueError, match=r"images \(28, 28, 1\).*tokenizer.resolution=5"):
    Experiment(tiny_config(tokenizer__resolution=5))
  tok = PixelTokenizer(levels=4, resolution=7, channels=1)
  with pytest.raises(ValueError, match="expects uint8"):
    tok.encode(np.zeros((1, 28, 28, 1), np.float32))
  with pytest.raises(ValueError, match=r"\[B, H, W, 1\], got shape \(1, 28, 28, 3\)"):
    tok.encode(np.zeros((1, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match="mesh .* has 16 devices but 8"):
    parallel.make_mesh(dict(data=2, fsdp=8, tensor=1))
  with pytest.raises(ValueError, match="names mesh axis 'model'"):
    parallel.logical_to_spec(("embed",), [("embed", "model")])
