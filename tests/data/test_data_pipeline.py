"""arjax.data: determinism, resumable state, per-process slicing, padding, sources, errors."""
import numpy as np
import pytest

from arjax import data
from arjax.data.idx import load_bundled


def cfg(**kw):
  c = data.default_config()
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture
def small_npz(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "small.npz"
  np.savez(path, train_image=rng.integers(0, 256, (37, 6, 6, 1), dtype=np.uint8),
           train_label=np.arange(37) % 3, test_image=rng.integers(0, 256, (11, 6, 6, 1),
                                                                   dtype=np.uint8),
           test_label=np.arange(11) % 3)
  return f"npz:{path}"


def take(it, n):
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_other_seed_differs():
  a = take(data.make_iterator(cfg(), global_batch_size=16, seed=3), 3)
  b = take(data.make_iterator(cfg(), global_batch_size=16, seed=3), 3)
  c = take(data.make_iterator(cfg(), global_batch_size=16, seed=4), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert any((x["label"] != z["label"]).any() for x, z in zip(a, c))
  assert a[0]["image"].shape == (16, 28, 28, 1) and a[0]["image"].dtype == np.uint8
  assert a[0]["label"].dtype == np.int32


def test_restored_state_repeats_the_same_batches():
  it = data.make_iterator(cfg(), global_batch_size=8, seed=1)
  take(it, 5)
  state = it.get_state()
  expected = take(it, 3)
  fresh = data.make_iterator(cfg(), global_batch_size=8, seed=1)
  fresh.set_state(state)
  for x, y in zip(expected, take(fresh, 3)):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_processes_read_disjoint_slices_covering_the_split(small_npz):
  seen = []
  for pi in range(2):
    it = data.make_iterator(cfg(source=small_npz), global_batch_size=4, seed=0, num_epochs=1,
                            drop_remainder=False, process_index=pi, process_count=2)
    for batch in it:
      keep = batch["mask"] > 0
      seen.append(batch["image"][keep].reshape(int(keep.sum()), 36))
  seen = np.concatenate(seen)
  arrays = np.load(small_npz[4:])
  want = arrays["train_image"].reshape(37, -1)
  assert len(seen) == 37
  # Every example exactly once: sort rows and compare.
  np.testing.assert_array_equal(np.unique(seen, axis=0), np.unique(want, axis=0))
  with pytest.raises(ValueError, match="global_batch_size=5 is not divisible by process_count=2"):
    data.make_iterator(cfg(source=small_npz), global_batch_size=5, process_index=0,
                       process_count=2)


def test_evaluation_pads_and_masks_without_dropping(small_npz):
  it = data.make_iterator(cfg(source=small_npz), split="test", global_batch_size=4, seed=0,
                          shuffle=False, num_epochs=1, drop_remainder=False)
  batches = list(it)
  assert [len(b["label"]) for b in batches] == [4, 4, 4]
  assert sum(b["mask"].sum() for b in batches) == 11
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(11) % 3)  # source order without shuffle


def test_resize_and_flip_against_numpy():
  images, _ = load_bundled("mnist", "test")
  it = data.make_iterator(cfg(pp="resize(14)"), split="test", global_batch_size=4,
                          shuffle=False, num_epochs=1)
  got = next(it)["image"].astype(np.float64)
  want = images[:4].astype(np.float64).reshape(4, 14, 2, 14, 2, 1).mean(axis=(2, 4))
  assert np.abs(got - want).max() <= 0.5 + 1e-9  # area resize by 2, rounded to uint8
  assert data.dataset_info(cfg(pp="resize(14)"))["image_shape"] == (14, 14, 1)
  flips = next(data.make_iterator(cfg(pp="flip_lr"), split="test", global_batch_size=32,
                                  shuffle=False, num_epochs=1))["image"]
  flipped = [np.array_equal(f, o[:, ::-1]) and not np.array_equal(f, o)
             for f, o in zip(flips, images[:32])]
  same = [np.array_equal(f, o) for f, o in zip(flips, images[:32])]
  assert all(a or b for a, b in zip(flipped, same)) and 4 < sum(flipped) < 28


def test_bad_sources_and_ops_name_what_is_wrong(tmp_path):
  with pytest.raises(KeyError, match="unknown"):
    data.dataset_info(cfg(source="cifar100"))
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    data.dataset_info(cfg(source=f"npz:{tmp_path}/nope.npz"))
  bad = tmp_path / "bad.npz"
  np.savez(bad, train_image=np.zeros((4, 6, 6, 1), np.float32), train_label=np.zeros(4),
           test_image=np.zeros((4, 6, 6, 1), np.float32), test_label=np.zeros(4))
  with pytest.raises(ValueError, match="float32"):
    data.dataset_info(cfg(source=f"npz:{bad}"))
  with pytest.raises((KeyError, ValueError), match="no_such_op"):
    data.make_iterator(cfg(pp="no_such_op(3)"), global_batch_size=4)
  with pytest.raises(ImportError, match=r"pip install -e \.\[tfds\]"):
    data.dataset_info(cfg(source="tfds:mnist"))
