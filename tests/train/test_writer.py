"""The run's clu MetricWriter (arjax.train.writer): every kind written is read back from the
TensorBoard event file (a reader written here from the TFRecord framing and tensorboardX's
Event proto; no TensorFlow), the scalars also from metrics.jsonl; process 1 writes nothing; a
non-scalar scalar is refused. clu's ReportProgress reports at exactly the requested steps."""
import glob
import io
import json
import os
import struct
import wave

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from arjax.train.writer import ReportProgress, create_writer


def read_events(logdir):
  """Every Event of the one event file in `logdir` (TFRecord: u64 length, u32 crc, data, u32
  crc; the crcs are not checked here)."""
  (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  data = open(path, "rb").read()
  out, i = [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    e = event_pb2.Event()
    e.ParseFromString(data[i + 12:i + 12 + n])
    out.append(e)
    i += 12 + n + 4
  return out


def values_by_tag(events):
  out = {}
  for e in events:
    for v in e.summary.value:
      out.setdefault(v.tag, []).append((e.step, v))
  return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("writer"))
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  batch = rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)
  video = rng.integers(0, 256, (1, 3, 4, 4, 3), dtype=np.uint8)
  audio = np.sin(np.linspace(0, 20, 400))[None, :, None] * 0.5
  hist = rng.normal(size=1000)
  w = create_writer(workdir, process_index=0)
  w.write_scalars(1, {"loss": 1.5, "lr": np.float32(0.25)})
  w.write_scalars(2, {"loss": np.asarray(0.75)})
  w.write_images(2, {"grid": image, "batch": batch})
  w.write_videos(2, {"video": video})
  w.write_audios(2, {"audio": audio}, sample_rate=8000)
  w.write_texts(2, {"samples": "hello\nworld"})
  w.write_histograms(2, {"h": hist}, num_buckets={"h": 7})
  w.write_hparams({"lr": 0.25, "name": "tiny", "layers": [2, 2]})
  w.write_summaries(3, {"t": np.float32(4.0)})
  w.close()
  return dict(workdir=workdir, image=image, batch=batch, video=video, audio=audio, hist=hist,
              tags=values_by_tag(read_events(os.path.join(workdir, "tensorboard"))))


def test_scalars_in_event_file_and_jsonl(written):
  tags = written["tags"]
  assert [(s, v.simple_value) for s, v in tags["loss"]] == [(1, 1.5), (2, 0.75)]
  assert [(s, v.simple_value) for s, v in tags["lr"]] == [(1, 0.25)]
  assert [(s, v.simple_value) for s, v in tags["t"]] == [(3, 4.0)]
  lines = [json.loads(l) for l in open(os.path.join(written["workdir"], "metrics.jsonl"))]
  # Only scalars, one line per write_scalars call (today's format); write_summaries goes to
  # the event file only.
  assert lines == [{"step": 1, "loss": 1.5, "lr": 0.25}, {"step": 2, "loss": 0.75}]


def test_images_videos_audio_text_histogram_hparams(written):
  tags = written["tags"]
  (step, v), = tags["grid"]
  decoded = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
  assert step == 2 and np.array_equal(decoded, written["image"])
  # tensorboardX tiles a batch of images into one image; each input image appears in it.
  (_, v), = tags["batch"]
  tiled = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
  tiled = tiled if tiled.ndim == 2 else tiled[..., 0]
  for img in written["batch"][..., 0]:
    assert any(np.array_equal(tiled[r:r + 4, c:c + 4], img)
               for r in range(tiled.shape[0] - 3) for c in range(tiled.shape[1] - 3))
  (_, v), = tags["video/0"]
  gif = Image.open(io.BytesIO(v.image.encoded_image_string))
  assert gif.format == "GIF" and gif.n_frames == 3 and (v.image.height, v.image.width) == (4, 4)
  (_, v), = tags["audio/0"]
  with wave.open(io.BytesIO(v.audio.encoded_audio_string)) as f:
    pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2") / 32767.0
    assert f.getframerate() == 8000 and f.getnchannels() == 1
  np.testing.assert_allclose(pcm, written["audio"][0, :, 0], atol=1 / 32767)
  (_, v), = tags["samples/text_summary"]
  assert b"hello" in v.tensor.string_val[0] and b"world" in v.tensor.string_val[0]
  (_, v), = tags["h"]
  assert v.histo.num == 1000 and np.isclose(v.histo.sum, written["hist"].sum(), rtol=1e-6)
  # 7 buckets as asked (tensorboardX prepends an empty one at the lowest edge).
  counts, _ = np.histogram(written["hist"], bins=7)
  assert list(v.histo.bucket) == [0] + counts.tolist()
  assert "_hparams_/session_start_info" in tags and "_hparams_/experiment" in tags


def test_other_processes_write_nothing(tmp_path):
  w = create_writer(str(tmp_path), process_index=1)
  w.write_scalars(1, {"loss": 1.0})
  w.write_images(1, {"grid": np.zeros((2, 2, 3), np.uint8)})
  w.close()
  assert os.listdir(tmp_path) == []


def test_non_scalar_scalar_refused(tmp_path):
  w = create_writer(str(tmp_path), process_index=0)
  with pytest.raises(ValueError, match="scalar metric 'loss' has shape \\(2,\\)"):
    w.write_scalars(1, {"loss": np.zeros(2)})
  w.close()


def test_report_progress_reports_at_logged_steps():
  """Every 3 steps and at the last (10), with a clock given: steps/s, ETA and examples/s."""
  progress = ReportProgress(num_train_steps=10, every_steps=3, batch_size=4)
  assert not progress(0, t=100.0)
  reported = {}
  for step in range(1, 11):
    if progress(step, t=100.0 + 0.5 * step):  # 2 steps/s
      reported[step] = dict(progress.values)
  assert sorted(reported) == [3, 6, 9, 10]
  for step, v in reported.items():
    assert v["steps_per_sec"] == pytest.approx(2.0)
    assert v["examples_per_sec"] == pytest.approx(8.0)
    assert v["eta_seconds"] == pytest.approx((10 - step) / 2.0)
    assert v["uptime"] >= 0
