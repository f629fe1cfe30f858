"""FID InceptionV3: layout and parameter count, forward shapes, input resizing, and reading
pt_inception state dicts (torch zip / legacy .pth without torch, .npz) with clear errors.

The real weights (95 MB) cannot be downloaded here, so the network runs on a random state
dict in the pt_inception layout, and .pth files are produced by a minimal writer of torch's
two serialisation formats (below) that follows torch.save's structure.
"""
import argparse
import collections
import io
import pickle
import struct
import zipfile

import argparse

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from arjax.evaluate import inception

# torchvision documents 27,161,264 parameters for inception_v3 (aux head, 1000 classes).
TORCHVISION_PARAMS = 27_161_264
AUX_HEAD = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)


@pytest.fixture(scope="module")
def random_state_dict():
  """A random state dict in the pt_inception layout, scaled so activations stay O(1)."""
  rng = np.random.default_rng(0)
  sd = {}
  for key, shape in inception.state_dict_shapes().items():
    if key.endswith("running_var"):
      sd[key] = np.ones(shape, np.float32)
    elif key.endswith(("running_mean", ".bias")):
      sd[key] = np.zeros(shape, np.float32)
    elif key.endswith("bn.weight"):
      sd[key] = np.ones(shape, np.float32)
    else:
      fan_in = int(np.prod(shape[1:]))
      sd[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
  return sd


def test_parameter_count_and_layout():
  model = nnx.eval_shape(lambda: inception.InceptionV3())
  n = inception.num_params(model)
  # pt_inception = torchvision's network without the aux head, with 1008 classes.
  assert n == TORCHVISION_PARAMS - AUX_HEAD + 8 * 2049 == inception.NUM_PARAMS == 23_850_960
  shapes = inception.state_dict_shapes(model)
  assert len(shapes) == 472  # 94 conv+BN layers x 5 tensors, fc weight and bias
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6d.branch7x7_2.conv.weight"] == (160, 160, 1, 7)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)
  # pytorch-fid's FIDInceptionE_2: Mixed_7c max-pools its pool branch, Mixed_7b averages.
  assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


def test_forward_shapes_at_299(random_state_dict, tmp_path):
  path = str(tmp_path / "pt_inception.npz")
  np.savez(path, **random_state_dict)
  model = inception.load_inception(path)
  # Weights land transposed into the NNX layout.
  np.testing.assert_array_equal(
      np.asarray(model.Conv2d_1a_3x3.conv.kernel[...]),
      random_state_dict["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), random_state_dict["fc.weight"].T)
  images = np.random.default_rng(1).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
  out = inception.make_extractor(model, batch_size=2)(images)
  assert out["pool3"].shape == (2, 2048)
  assert out["spatial"].shape == (2, 17 * 17 * 7)
  assert out["logits"].shape == out["logits_unbiased"].shape == (2, 1008)
  assert all(np.isfinite(v).all() for v in out.values())
  assert np.all(out["pool3"] >= 0) and out["pool3"].std() > 0  # post-ReLU average
  np.testing.assert_allclose(out["logits"] - out["logits_unbiased"],
                             np.broadcast_to(random_state_dict["fc.bias"], (2, 1008)), atol=1e-5)
  np.testing.assert_allclose(out["logits_unbiased"],
                             out["pool3"] @ random_state_dict["fc.weight"].T, rtol=1e-4, atol=1e-4)
  assert not np.allclose(out["pool3"][0], out["pool3"][1])


def test_resize_conventions():
  ramp = np.array([0.0, 1.0], np.float32)
  # TF1 ResizeBilinear (no half-pixel centres): source = dest * in/out.
  np.testing.assert_allclose(inception._resize_matrix(2, 4, "tf1") @ ramp, [0, 0.5, 1, 1])
  # torch F.interpolate(bilinear, align_corners=False): half-pixel centres, clamped.
  np.testing.assert_allclose(inception._resize_matrix(2, 4, "pytorch_fid") @ ramp,
                             [0, 0.25, 0.75, 1])
  # 28 -> 299 rows sum to 1 and, for tf1, follow the formula element by element.
  m = inception._resize_matrix(28, 299, "tf1")
  np.testing.assert_allclose(m.sum(1), 1, rtol=1e-6)
  src = np.arange(299, dtype=np.float32) * np.float32(28 / 299)
  x = np.random.default_rng(2).standard_normal(28)
  lo = np.floor(src).astype(int)
  want = x[lo] + (x[np.minimum(lo + 1, 27)] - x[lo]) * (src - lo)
  np.testing.assert_allclose(m @ x, want, rtol=1e-5, atol=1e-6)
  # Grey uint8 28x28 -> [B, 299, 299, 3] in [-1, 1]; a constant image stays constant.
  img = np.full((1, 28, 28, 1), 200, np.uint8)
  x = inception.preprocess(jnp.asarray(img))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(np.asarray(x), (200 - 128) / 128, rtol=1e-6)
  with pytest.raises(ValueError, match="bilinear|tf1"):
    inception._resize_matrix(2, 4, "bicubic")


def test_pools_follow_the_tf_graph():
  # TF 'SAME' average pooling ignores padding: a constant map stays constant at the borders.
  ones = jnp.ones((1, 5, 5, 2))
  np.testing.assert_allclose(np.asarray(inception._avg_pool_3x3(ones)), 1.0)
  # Max pooling pads with -inf: a negative map's border maxima come from inside the image.
  x = -jnp.arange(1.0, 26.0).reshape(1, 5, 5, 1)
  got = np.asarray(inception._max_pool_3x3(x))[0, :, :, 0]
  assert got[0, 0] == -1.0 and got[4, 4] == -19.0 and got[2, 2] == -7.0


def test_missing_weights_file_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth"):
    inception.load_inception(str(tmp_path / "nope.pth"))


def test_wrong_layout_names_the_keys(random_state_dict, tmp_path):
  sd = dict(random_state_dict)
  del sd["Mixed_5b.branch1x1.bn.running_mean"]
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)   # torchvision's 1000-class head
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(0)  # torch >= 0.4.1: ignored
  path = str(tmp_path / "wrong.npz")
  np.savez(path, **sd)
  with pytest.raises(ValueError) as err:
    inception.load_inception(path)
  msg = str(err.value)
  assert "Mixed_5b.branch1x1.bn.running_mean" in msg
  assert "AuxLogits.fc.weight" in msg
  assert "fc.weight: expected (1008, 2048), got (1000, 2048)" in msg
  assert "num_batches_tracked" not in msg


# ------------------------------------------------------- a minimal torch.save, for the reader

class _Global:
  """Pickles as GLOBAL module.name, like torch's own classes and functions."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce functions to be callable
    raise NotImplementedError


class _Tensor:
  def __init__(self, key, array, offset=0, shape=None, strides=None):
    self.key, self.array = key, array
    self.offset = offset
    self.shape = array.shape if shape is None else shape
    self.strides = (tuple(s // array.itemsize for s in array.strides) if strides is None
                    else strides)


_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(ml_dtypes.bfloat16): "BFloat16Storage"}


class _Storage:
  def __init__(self, tensor):
    self.tensor = tensor


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets save() be extended
  """Protocol 2, tensors as _rebuild_tensor_v2(storage, ...), storages as persistent ids."""

  def __init__(self, f, legacy):
    super().__init__(f, protocol=2)
    self.legacy = legacy

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      return
    super().save(obj, save_persistent_id)

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    t = obj.tensor
    storage_type = _Global("torch", _STORAGE[t.array.dtype])
    if self.legacy:  # ('storage', type, root key, location, numel, view metadata)
      return ("storage", storage_type, t.key, "cpu", t.array.size, None)
    return ("storage", storage_type, t.key, "cpu", t.array.size)

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      return (_Global("torch._utils", "_rebuild_tensor_v2"),
              (_Storage(obj), obj.offset, tuple(obj.shape), tuple(obj.strides), False,
               collections.OrderedDict()))
    return NotImplemented


def _save_torch(path, tensors, legacy, wrap=None):
  """tensors: name -> _Tensor. Writes torch's zip (>= 1.6) or legacy (< 1.6) format; `wrap`
  turns the state dict into the saved object (e.g. a training checkpoint dict)."""
  sd = collections.OrderedDict(tensors)
  sd._metadata = collections.OrderedDict({"": {"version": 1}})
  buf = io.BytesIO()
  _TorchPickler(buf, legacy).dump(sd if wrap is None else wrap(sd))
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950A86A20F9469CFC6C, 1001,
                     {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, f, protocol=2)
      f.write(buf.getvalue())
      keys = [t.key for t in tensors.values()]
      pickle.dump(keys, f, protocol=2)
      for t in tensors.values():
        f.write(struct.pack("<q", t.array.size))
        f.write(t.array.tobytes())
  else:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
      zf.writestr("archive/data.pkl", buf.getvalue())
      zf.writestr("archive/byteorder", "little")
      zf.writestr("archive/version", "3\n")
      for t in tensors.values():
        zf.writestr(f"archive/data/{t.key}", t.array.tobytes())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_torch_files_without_torch(tmp_path, legacy):
  rng = np.random.default_rng(3)
  w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
  base = rng.standard_normal(12).astype(np.float32)
  tensors = {
      "conv.weight": _Tensor("0", w.ravel(), 0, w.shape, (12, 4, 2, 1)),
      # A transposed view with an offset: storage [12], tensor base[2:].reshape(5, 2).T
      "fc.weight": _Tensor("1", base, offset=2, shape=(2, 5), strides=(1, 2)),
      "bn.num_batches_tracked": _Tensor("2", np.array([7], np.int64), 0, (), ()),
  }
  path = str(tmp_path / ("legacy.pth" if legacy else "zip.pth"))
  _save_torch(path, tensors, legacy)
  sd = inception.read_state_dict(path)
  assert list(sd) == list(tensors)
  np.testing.assert_array_equal(sd["conv.weight"], w)
  np.testing.assert_array_equal(sd["fc.weight"], base[2:].reshape(5, 2).T)
  assert sd["bn.num_batches_tracked"].shape == () and int(sd["bn.num_batches_tracked"]) == 7


def test_refuses_code_in_pickles(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global .*print"):
    inception.read_state_dict(path)


def test_reads_training_checkpoints_with_nested_bfloat16_weights(tmp_path):
  # LlamaGen/VAR-style: {"model": state dict, "steps": int, "args": argparse.Namespace}, bf16.
  w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
  path = str(tmp_path / "train.pt")
  _save_torch(path, {"tok_embeddings.weight": _Tensor("0", w)}, legacy=False,
              wrap=lambda sd: {"model": sd, "steps": 5, "args": argparse.Namespace(lr=1e-4)})
  sd = inception.read_state_dict(path)
  assert list(sd) == ["tok_embeddings.weight"] and sd["tok_embeddings.weight"].dtype == w.dtype
  np.testing.assert_array_equal(sd["tok_embeddings.weight"].astype(np.float32),
                                w.astype(np.float32))
