"""Tests of arjax.data: order, state, sharding, padding, preprocessing ops, sources, errors."""
import json
import sys
import time
import types

import numpy as np
import pytest

from arjax import data
from arjax.data import preprocess
from arjax.data import sources

N_TRAIN, N_TEST = 37, 11


def _images(rng, n, h=6, w=5, c=None):
  shape = (n, h, w) if c is None else (n, h, w, c)
  return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def npz(tmp_path):
  """An npz source whose labels are example ids (0..N-1), so examples can be counted."""
  rng = np.random.default_rng(0)
  path = tmp_path / "small.npz"
  np.savez(path, train_image=_images(rng, N_TRAIN), train_label=np.arange(N_TRAIN),
           test_image=_images(rng, N_TEST), test_label=np.arange(N_TEST))
  return path


def _cfg(source="mnist", pp=""):
  cfg = data.default_config()
  cfg.source, cfg.pp = source, pp
  return cfg


def _it(cfg, split="train", **kw):
  kw.setdefault("global_batch_size", 8)
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return data.make_iterator(cfg, split, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _equal(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# -- order and state -------------------------------------------------------------------------
def test_same_seed_same_batches_other_seed_differs(npz):
  cfg = _cfg(f"npz:{npz}", "flip_lr")
  a, b = _take(_it(cfg, seed=3), 12), _take(_it(cfg, seed=3), 12)
  assert _equal(a, b)
  c = _take(_it(cfg, seed=4), 12)
  assert not any(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_each_epoch_is_a_new_permutation(npz):
  # G divides nothing here on purpose: batches straddle epochs.
  labels = np.concatenate([b["label"] for b in _take(_it(_cfg(f"npz:{npz}"), seed=1,
                                                         global_batch_size=5), 15)])
  e0, e1 = labels[:N_TRAIN], labels[N_TRAIN:2 * N_TRAIN]
  assert sorted(e0) == sorted(e1) == list(range(N_TRAIN))
  assert not np.array_equal(e0, e1)
  unshuffled = _take(_it(_cfg(f"npz:{npz}"), shuffle=False, global_batch_size=N_TRAIN), 2)
  assert all(np.array_equal(b["label"], np.arange(N_TRAIN)) for b in unshuffled)


def test_state_round_trip_continues_with_the_same_batches(npz):
  cfg = _cfg(f"npz:{npz}", "flip_lr|resize(4)")
  it = _it(cfg, seed=2, global_batch_size=6)
  _take(it, 5)                                 # 30 examples: the next batch crosses epochs.
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 7)
  fresh = _it(cfg, seed=2, global_batch_size=6)
  fresh.set_state(state)
  assert _equal(_take(fresh, 7), expected)
  assert fresh.get_state()["step"] == 12


def test_set_state_rejects_a_state_of_other_settings(npz):
  state = _it(_cfg(f"npz:{npz}"), seed=2).get_state()
  with pytest.raises(ValueError, match=r"seed: saved 2, now 5; global_batch_size: saved 8, now 4"):
    _it(_cfg(f"npz:{npz}"), seed=5, global_batch_size=4).set_state(state)
  with pytest.raises(ValueError, match="expected a dict from get_state"):
    _it(_cfg(f"npz:{npz}")).set_state({"next_index": 3})


@pytest.mark.parametrize("drop_remainder, g", [(False, 8), (True, 4)])
def test_processes_read_disjoint_slices_covering_the_split(tmp_path, drop_remainder, g):
  n = 36   # divisible by g=4, so drop_remainder=True keeps every example too.
  path = tmp_path / "ids.npz"
  np.savez(path, train_image=np.zeros((n, 2, 2), np.uint8), train_label=np.arange(n))
  cfg = _cfg(f"npz:{path}")
  per_process = []
  for i in range(2):
    batches = list(_it(cfg, global_batch_size=g, seed=7, num_epochs=1, process_index=i,
                       process_count=2, drop_remainder=drop_remainder))
    assert all(len(b["label"]) == g // 2 for b in batches)
    real = [b["label"][b["mask"] > 0] if "mask" in b else b["label"] for b in batches]
    per_process.append((batches, np.concatenate(real)))
  ids0, ids1 = per_process[0][1], per_process[1][1]
  assert not set(ids0) & set(ids1)
  assert sorted(np.concatenate([ids0, ids1])) == list(range(n))
  assert len(per_process[0][0]) == len(per_process[1][0])   # Same number of steps.
  # The global batch does not depend on the number of processes.
  single = list(_it(cfg, global_batch_size=g, seed=7, num_epochs=1,
                    drop_remainder=drop_remainder))
  for s, p0, p1 in zip(single, per_process[0][0], per_process[1][0]):
    assert np.array_equal(s["label"], np.concatenate([p0["label"], p1["label"]]))


def test_global_batch_not_divisible_by_processes(npz):
  with pytest.raises(ValueError, match="global_batch_size=7 is not divisible by process_count=2"):
    _it(_cfg(f"npz:{npz}"), global_batch_size=7, process_count=2)


def test_no_drop_remainder_pads_and_masks(npz):
  batches = list(_it(_cfg(f"npz:{npz}"), "test", global_batch_size=4, shuffle=False,
                     num_epochs=1, drop_remainder=False))
  assert len(batches) == -(-N_TEST // 4)
  for b in batches:
    assert b["image"].shape == (4, 6, 5, 1) and b["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  assert (mask == 1).sum() == N_TEST and (mask == 0).sum() == 4 * len(batches) - N_TEST
  labels = np.concatenate([b["label"] for b in batches])
  assert np.array_equal(labels[mask == 1], np.arange(N_TEST))
  last = batches[-1]
  assert not last["image"][last["mask"] == 0].any()   # Padding is zeros.


def test_drop_remainder_with_too_few_examples_fails(npz):
  with pytest.raises(ValueError, match="fewer than global_batch_size=64"):
    _it(_cfg(f"npz:{npz}"), "test", global_batch_size=64, num_epochs=1)


def test_mnist_batch_is_fast_and_well_formed():
  it = _it(_cfg("mnist"), global_batch_size=64)
  b = next(it)
  assert b["image"].shape == (64, 28, 28, 1) and b["image"].dtype == np.uint8
  assert b["label"].shape == (64,) and b["label"].dtype == np.int32 and "mask" not in b
  start = time.perf_counter()
  _take(it, 50)
  assert (time.perf_counter() - start) / 50 < 5e-3


def test_dataset_info_after_preprocessing():
  info = data.dataset_info(_cfg("fashion_mnist", "resize(14)|to_rgb"))
  assert info["image_shape"] == (14, 14, 3) and info["num_classes"] == 10
  assert info["num_examples"] == {"train": 60000, "test": 10000}


def test_workers_restore_the_in_process_state(npz):
  cfg = _cfg(f"npz:{npz}", "flip_lr")
  it = _it(cfg, seed=1)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  cfg.worker_count = 1
  workers = _it(cfg, seed=1)
  workers.set_state(state)
  try:
    assert _equal(_take(workers, 3), expected)
  finally:
    workers.close()


# -- grain pipeline: epochs, processes, workers, resume with prefetch -------------------------
def _global(cfg, process_count, k, **kw):
  """The first k global batches: the processes' batches concatenated, as in a launch."""
  its = [_it(cfg, process_index=i, process_count=process_count, **kw)
         for i in range(process_count)]
  return [{key: np.concatenate([b[key] for b in parts]) for key in parts[0]}
          for parts in zip(*[_take(it, k) for it in its])]


@pytest.mark.parametrize("pp, n", [("", N_TRAIN),
                                   ("keep_classes(" + ", ".join(map(str, range(0, N_TRAIN, 2)))
                                    + ")", (N_TRAIN + 1) // 2)])
def test_every_epoch_is_a_permutation_whatever_the_process_count(npz, pp, n):
  # G=6 divides neither split: batches straddle epoch boundaries. Labels are example ids.
  cfg, epochs = _cfg(f"npz:{npz}", pp), 4
  k = -(-epochs * n // 6)
  one, two = _global(cfg, 1, k, seed=5, global_batch_size=6), _global(cfg, 2, k, seed=5,
                                                                     global_batch_size=6)
  assert _equal(one, two)
  stream = np.concatenate([b["label"] for b in one])
  ids = list(range(0, N_TRAIN, 2)) if pp else list(range(N_TRAIN))
  orders = [stream[e * n:(e + 1) * n] for e in range(epochs)]
  assert all(sorted(o) == ids for o in orders)            # Nothing lost or repeated.
  assert len({tuple(o) for o in orders}) == epochs         # A new permutation every epoch.


def _recording_put(calls):
  def put(batch):
    calls.append(batch["label"][0])
    return {k: v.copy() for k, v in batch.items()}
  return put


def _wait_for(cond, what, limit=20.0):
  end = time.monotonic() + limit
  while not cond():
    if time.monotonic() > end:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.01)


@pytest.mark.parametrize("consumed", [2, 4, 5])   # mid-epoch, straddling batch next, after it
def test_resume_with_host_and_device_prefetch_is_exact(npz, consumed):
  # N=37, G=8: global batch 4 holds positions 32..39, the end of epoch 0 and start of epoch 1.
  cfg = _cfg(f"npz:{npz}", "flip_lr")
  cfg.prefetch, cfg.device_prefetch = 2, 2
  calls = []
  it = _it(cfg, seed=4).to_device(_recording_put(calls))
  _take(it, consumed)
  # The device stage has run ahead of what was consumed; the state must not count that.
  _wait_for(lambda: len(calls) >= consumed + 2, "the device prefetch buffer to fill")
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == consumed and state["grain"] == {"next_index": consumed}
  expected = _take(it, 6)
  reference = _take(_it(_cfg(f"npz:{npz}", "flip_lr"), seed=4), consumed + 6)[consumed:]
  assert _equal(expected, reference)                       # Prefetch does not change batches.
  unbuffered = _cfg(f"npz:{npz}", "flip_lr")
  unbuffered.device_prefetch = 0                           # put in the consuming thread
  for fresh in (_it(cfg, seed=4).to_device(_recording_put([])),
                _it(unbuffered, seed=4).to_device(_recording_put([])),
                _it(_cfg(f"npz:{npz}", "flip_lr"), seed=4)):
    fresh.set_state(state)
    assert _equal(_take(fresh, 6), expected)
    fresh.close()
  # On 2 processes, the halves of the restored global batches are the same batches.
  halves = [_it(cfg, seed=4, process_index=i, process_count=2) for i in range(2)]
  for h in halves:
    h.set_state(state)
  got = [np.concatenate(pair) for pair in zip(*[[b["label"] for b in _take(h, 6)]
                                                 for h in halves])]
  assert all(np.array_equal(g, e["label"]) for g, e in zip(got, expected))
  it.close()


def test_set_state_refuses_old_or_inconsistent_states(npz):
  it = _it(_cfg(f"npz:{npz}"), seed=2)
  _take(it, 3)
  state = it.get_state()
  old = {k: v for k, v in state.items() if k not in ("grain", "base", "worker_count")}
  old["version"] = 1
  with pytest.raises(ValueError, match=r"state version 1: expected 2; .*older arjax"):
    _it(_cfg(f"npz:{npz}"), seed=2).set_state(old)
  with pytest.raises(ValueError, match=r"does not match step=3 and base=0: expected next_index=3"):
    _it(_cfg(f"npz:{npz}"), seed=2).set_state({**state, "grain": {"next_index": 5}})
  with pytest.raises(ValueError, match=r"state step=99; expected an int in 0\.\.4"):
    _it(_cfg(f"npz:{npz}"), "test", seed=2, num_epochs=3).set_state(
        {**state, "split": "test", "num_epochs": 3, "num_examples": N_TEST, "step": 99})


def test_two_workers_give_the_same_batches_and_resume_from_their_state(npz):
  cfg = _cfg(f"npz:{npz}", "flip_lr")
  reference = _take(_it(cfg, seed=6, global_batch_size=10), 9)   # 90 examples: 2+ epochs
  cfg.worker_count = 2
  workers = _it(cfg, seed=6, global_batch_size=10)
  try:
    assert _equal(_take(workers, 4), reference[:4])
    state = json.loads(json.dumps(workers.get_state()))
    assert state["worker_count"] == 2 and "next_index" not in state["grain"]  # per-worker state
  finally:
    workers.close()
  restored = _it(cfg, seed=6, global_batch_size=10)
  restored.set_state(state)                                     # grain's multiprocess state
  try:
    assert _equal(_take(restored, 5), reference[4:])
  finally:
    restored.close()


def test_running_prefetch_threads_are_closed_quietly_at_exit(npz):
  # An error ends the program while grain's prefetch threads run: the error is the last line
  # (grain's __del__ at interpreter teardown printed a traceback after it).
  import os
  import subprocess
  script = (
      "from arjax import data\n"
      f"cfg = data.default_config(); cfg.source = 'npz:{npz}'; cfg.prefetch = 2\n"
      "it = data.make_iterator(cfg, global_batch_size=4, process_index=0, process_count=1)\n"
      "it = it.to_device(lambda b: b); next(it)\n"
      "def fail(it):\n  raise RuntimeError('the last line')\n"
      "fail(it)\n")
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == "RuntimeError: the last line", out.stderr[-2000:]
  assert "Exception ignored" not in out.stderr


# -- preprocessing ops -----------------------------------------------------------------------
def _pp(spec, image, seeds=None):
  seeds = np.arange(len(image), dtype=np.uint64) if seeds is None else seeds
  return preprocess.parse(spec)({"image": image, "label": np.zeros(len(image), np.int32)},
                                seeds)["image"]


@pytest.mark.parametrize("method", ["area", "bilinear"])
@pytest.mark.parametrize("size", [4, (3, 9), 13])
def test_resize_keeps_constant_images_constant(method, size):
  values = np.array([0, 1, 127, 200, 255], np.uint8)
  image = np.broadcast_to(values[:, None, None, None], (5, 6, 7, 2)).copy()
  out = _pp(f"resize({size!r}, method={method!r})", image)
  hw = (size, size) if isinstance(size, int) else size
  assert out.shape == (5,) + hw + (2,) and out.dtype == np.uint8
  assert np.array_equal(out, np.broadcast_to(values[:, None, None, None], out.shape))


def test_resize_area_is_the_block_mean():
  image = _images(np.random.default_rng(1), 3, 12, 8, 3)
  ref = image.reshape(3, 4, 3, 4, 2, 3).astype(np.float64).mean((2, 4))
  assert np.array_equal(_pp("resize((4, 4))", image), np.floor(ref + 0.5).astype(np.uint8))


def test_resize_bilinear_matches_jax_upsampling():
  import jax
  image = _images(np.random.default_rng(2), 2, 5, 4, 1)
  ref = jax.image.resize(image.astype(np.float32), (2, 10, 8, 1), "linear", antialias=False)
  out = _pp("resize((10, 8), method='bilinear')", image)
  assert np.abs(out.astype(np.float32) - np.asarray(ref)).max() <= 0.5 + 1e-4


def test_quantize_maps_to_bucket_centres():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  for levels in (2, 3, 8, 200, 256):
    q = _pp(f"quantize({levels})", x)
    assert len(np.unique(q)) == levels
    assert np.array_equal(q.astype(int) * levels // 256, x.astype(int) * levels // 256)
    assert np.array_equal(_pp(f"quantize({levels})", q), q)   # Idempotent.
  assert np.array_equal(np.unique(_pp("quantize(2)", x)), [64, 192])
  assert np.array_equal(_pp("quantize(256)", x), x)
  t = np.arange(8)   # For levels dividing 256, the tokenizer's decoded values exactly.
  assert np.array_equal(np.unique(_pp("quantize(8)", x)), (t + 0.5) * 256 / 8)


def test_flip_lr_mirrors_exactly_the_examples_it_flips():
  image = _images(np.random.default_rng(3), 200, 4, 5, 2)
  out = _pp("flip_lr", image)
  flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, image)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(out, image)])
  assert (flipped | kept).all() and 60 < flipped.sum() < 140
  assert np.array_equal(_pp("flip_lr", image), out)            # Deterministic per seed.
  assert np.array_equal(_pp("flip_lr(0.0)", image), image)
  assert np.array_equal(_pp("flip_lr(1.0)", image), image[:, :, ::-1])


def test_flip_in_the_pipeline_does_not_depend_on_the_batch_size(npz):
  def stream(g):
    it = _it(_cfg(f"npz:{npz}", "flip_lr"), seed=9, global_batch_size=g, num_epochs=1,
             drop_remainder=False)
    return np.concatenate([b["image"][b["mask"] > 0] for b in it])
  a, b = stream(4), stream(10)
  assert np.array_equal(a, b)


def test_rgb_and_gray():
  gray = _images(np.random.default_rng(4), 3, 4, 4, 1)
  rgb = _pp("to_rgb", gray)
  assert rgb.shape == (3, 4, 4, 3) and (rgb == gray).all()
  assert np.array_equal(_pp("to_gray", rgb), gray)
  color = _images(np.random.default_rng(5), 3, 4, 4, 3)
  ref = np.floor(color.astype(np.float64) @ [0.299, 0.587, 0.114] + 0.5)[..., None]
  assert np.abs(_pp("to_gray", color).astype(int) - ref).max() <= 0   # Exact up to rounding.
  with pytest.raises(ValueError, match=r"to_rgb.*1 or 3 channels.*\[3, 4, 4, 2\]"):
    _pp("to_rgb", np.zeros((3, 4, 4, 2), np.uint8))


def test_keep_classes_filters_the_split():
  cfg = _cfg("mnist", "keep_classes(0, 1)")
  test_labels = sources.open_source("mnist", "test").labels()
  info = data.dataset_info(cfg)
  assert info["num_examples"]["test"] == np.isin(test_labels, [0, 1]).sum()
  batches = list(_it(cfg, "test", global_batch_size=256, num_epochs=1, drop_remainder=False))
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert set(labels) == {0, 1} and len(labels) == info["num_examples"]["test"]


def test_bad_pp_strings():
  with pytest.raises(KeyError, match=r"unknown preprocessing op 'blur'.*flip_lr.*resize"):
    preprocess.parse("resize(8)|blur(2)")
  with pytest.raises(ValueError, match=r"cannot parse op 'resize\(8'"):
    preprocess.parse("resize(8")
  with pytest.raises(ValueError, match=r"op 'quantize\(1\)'.*levels=1"):
    preprocess.parse("quantize(1)")
  with pytest.raises(ValueError, match=r"op 'resize\(1, 2, 3\)'"):
    preprocess.parse("resize(1, 2, 3)")


# -- sources ---------------------------------------------------------------------------------
def test_npz_layouts_round_trip(tmp_path):
  rng = np.random.default_rng(6)
  images = {s: _images(rng, n, 3, 4, 2) for s, n in (("train", 9), ("test", 5))}
  for split, im in images.items():   # One file per split, plain keys.
    np.savez(tmp_path / f"{split}.npz", image=im, label=np.arange(len(im)) % 3)
  cfg = _cfg(f"npz:{tmp_path}/{{split}}.npz")
  for split, im in images.items():
    (b,) = list(_it(cfg, split, global_batch_size=len(im), shuffle=False, num_epochs=1))
    assert np.array_equal(b["image"], im) and np.array_equal(b["label"], np.arange(len(im)) % 3)
  info = data.dataset_info(cfg)
  assert info["image_shape"] == (3, 4, 2) and info["num_classes"] == 3
  # Plain keys without {split} are the train split only.
  np.savez(tmp_path / "one.npz", image=images["train"], label=np.zeros(9, int))
  with pytest.raises(KeyError, match="no 'test_image' for split 'test'"):
    data.dataset_info(_cfg(f"npz:{tmp_path}/one.npz"))
  one = _cfg(f"npz:{tmp_path}/one.npz")
  one.splits.test = "train"    # ...unless asked for on purpose.
  assert data.dataset_info(one)["num_examples"] == {"train": 9, "test": 9}


def test_array_record_round_trip_with_extra_keys(tmp_path):
  rng = np.random.default_rng(7)
  examples = {s: [{"image": _images(rng, 1, 5, 5)[0], "label": np.int32(i % 4),
                   "tokens": np.full((3,), i, np.int32)} for i in range(n)]
              for s, n in (("train", 10), ("test", 6))}
  for split, exs in examples.items():
    assert data.write_array_record(str(tmp_path / f"{split}.array_record"), exs) == len(exs)
  cfg = _cfg(f"array_record:{tmp_path}/{{split}}.array_record")
  info = data.dataset_info(cfg)
  assert info["image_shape"] == (5, 5, 1) and info["num_classes"] == 4
  assert info["num_examples"] == {"train": 10, "test": 6} and info["shapes"]["tokens"] == (3,)
  batches = list(_it(cfg, "test", global_batch_size=4, shuffle=False, num_epochs=1,
                     drop_remainder=False))
  got = {k: np.concatenate([b[k] for b in batches])[:6] for k in ("image", "label", "tokens")}
  assert np.array_equal(got["image"][..., 0], np.stack([e["image"] for e in examples["test"]]))
  assert np.array_equal(got["label"], np.arange(6) % 4) and got["label"].dtype == np.int32
  assert np.array_equal(got["tokens"][:, 0], np.arange(6))


def test_array_record_images_of_different_sizes_need_resize(tmp_path):
  path = str(tmp_path / "mixed.array_record")
  data.write_array_record(path, [{"image": np.full((h, h, 3), h, np.uint8), "label": 0}
                                 for h in (4, 6, 8)])
  it = _it(_cfg(f"array_record:{path}", "resize(2)"), global_batch_size=3, shuffle=False)
  assert np.array_equal(next(it)["image"][:, 0, 0, 0], [4, 6, 8])
  with pytest.raises(ValueError, match="different shapes.*resize"):
    next(_it(_cfg(f"array_record:{path}"), global_batch_size=3))


def test_sources_have_stable_reprs(npz):
  assert repr(sources.open_source(f"npz:{npz}", "test")) == (
      f"ArraySource('npz:{npz}', split='test')")
  assert repr(sources.open_source("mnist", "train")) == "ArraySource('mnist', split='train')"


@pytest.mark.parametrize("source, error, match", [
    ("cifar", KeyError, r"unknown data source 'cifar'.*fashion_mnist.*npz"),
    ("hdf5:/x.h5", KeyError, r"unknown data source scheme 'hdf5'.*array_record.*tfds"),
    ("npz:/nowhere/x.npz", FileNotFoundError, "/nowhere/x.npz"),
    ("array_record:/nowhere/{split}.ar", FileNotFoundError, "/nowhere/train.ar"),
])
def test_bad_source_names(source, error, match):
  with pytest.raises(error, match=match):
    data.dataset_info(_cfg(source))


@pytest.mark.parametrize("arrays, match", [
    ({"train_image": np.zeros((4, 3, 3), np.float32), "train_label": np.zeros(4, int)},
     r"bad\.npz \(train_image\).*float32 \[4, 3, 3\].*expected uint8 \[N, H, W\]"),
    ({"train_image": np.zeros((4, 3), np.uint8), "train_label": np.zeros(4, int)},
     r"uint8 \[4, 3\]; expected uint8 \[N, H, W\] or \[N, H, W, C\]"),
    ({"train_image": np.zeros((4, 3, 3), np.uint8), "train_label": np.zeros(5, int)},
     r"bad\.npz.*4 images but 5 labels"),
    ({"train_image": np.zeros((4, 3, 3), np.uint8)}, r"no train_label"),
])
def test_bad_npz_contents(tmp_path, arrays, match):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=match):
    _it(_cfg(f"npz:{tmp_path}/bad.npz"))


def test_bad_array_record_contents(tmp_path):
  from array_record.python import array_record_module
  from flax import serialization
  path = str(tmp_path / "bad.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  writer.write(serialization.msgpack_serialize({"image": np.zeros((2, 2), np.float32),
                                                "label": np.int32(0)}))
  writer.close()
  with pytest.raises(ValueError, match=r"bad\.array_record.*record 0.*float32.*expected uint8"):
    _it(_cfg(f"array_record:{path}"))
  with pytest.raises(ValueError, match=r"expected a 'label'"):
    data.write_array_record(str(tmp_path / "x.array_record"), [{"image": np.zeros((2, 2))}])


def test_unknown_config_field():
  cfg = _cfg()
  cfg.workers = 2
  with pytest.raises(ValueError, match=r"data\.workers"):
    data.dataset_info(cfg)


def test_tfds_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)   # As if not installed.
  with pytest.raises(ImportError, match=r"pip install -e \.\[tfds\]"):
    data.dataset_info(_cfg("tfds:cifar10"))


def test_tfds_unprepared_data_set_says_how_to_prepare(monkeypatch):
  def data_source(name, split, data_dir):
    raise FileNotFoundError(f"no {name} in {data_dir}")
  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=data_source))
  with pytest.raises(FileNotFoundError,
                     match=r"tfds build cifar10 --file_format=array_record --data_dir=/d"):
    cfg = _cfg("tfds:cifar10")
    cfg.tfds_data_dir = "/d"
    data.dataset_info(cfg)
