"""The HTTP API of `arjax.serve` on the in-process server (tests/serve/conftest.py: slots 4).

Continuous batching must not change what a request gets: greedy tokens equal the KV-cached
SequentialSampler's even when the request's images reuse slots while other requests run, and a
seeded request gets the same tokens alone as among others. Concurrent requests are all
answered; each bad request is a 400 naming its field; PNG grids are the tokenizer's decoding
of the tokens.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import MAX_IMAGES, SLOTS, get, post

N = 49  # 7 x 7 tokens per image.


def _gen(server, **body):
  status, out, _ = post(server.url + "/generate", {"format": "tokens", **body})
  assert status == 200, out
  return np.asarray(out["tokens"], np.int32)


def _concurrently(server, bodies):
  """Posts every body at once (one thread each); returns their (status, payload) in order."""
  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    futures = [pool.submit(post, server.url + "/generate", b) for b in bodies]
    return [f.result()[:2] for f in futures]


def test_health(server):
  status, h = get(server.url + "/health")
  assert status == 200 and h["status"] == "ok"
  assert h["slots"] == SLOTS and h["tokens_per_image"] == N and h["num_classes"] == 10
  assert h["guidance"] is True and h["token_grid"] == [7, 7]


def test_concurrent_requests_are_all_answered(server):
  before = get(server.url + "/health")[1]
  bodies = [{"labels": [i % 10] * (1 + i % 3), "seed": i, "format": "tokens",
             "temperature": 1.0, "top_k": i % 4} for i in range(12)]
  results = _concurrently(server, bodies)
  greedy_images = 0
  for body, (status, out) in zip(bodies, results):
    assert status == 200, out
    tokens = np.asarray(out["tokens"])
    assert tokens.shape == (len(body["labels"]), N) and out["labels"] == body["labels"]
    assert tokens.min() >= 0 and tokens.max() < 4
    if body["top_k"] == 1:  # top-1 is greedy: every token is the argmax, whatever the seed.
      np.testing.assert_array_equal(tokens, _gen(server, labels=body["labels"], seed=999,
                                                 temperature=0.0))
      greedy_images += len(body["labels"])
  after = get(server.url + "/health")[1]
  assert after["completed"] - before["completed"] == 12 + 3  # + the 3 greedy checks.
  assert after["queued"] == 0 and after["running"] == 0 and after["active_slots"] == 0
  images = sum(len(b["labels"]) for b in bodies) + greedy_images
  assert after["images"] - before["images"] == images
  # The concurrent requests shared steps: fewer forward passes than tokens drawn.
  assert after["steps"] - before["steps"] < images * N


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_greedy_tokens_equal_the_sequential_sampler_with_slots_reused(server, cfg):
  """7 images on 4 slots (slots are refilled mid-batch, their caches holding another image's
  entries), next to other requests: each image's greedy tokens equal SequentialSampler's."""
  from arjax.sampling import SamplingConfig, build_sampler
  labels = [0, 1, 2, 3, 4, 5, 6]
  bodies = [{"labels": [9, 8], "seed": 5, "format": "tokens"},
            {"labels": labels, "temperature": 0.0, "cfg_scale": cfg, "format": "tokens"},
            {"labels": [7], "seed": 6, "top_p": 0.8, "cfg_scale": 2.0, "format": "tokens"}]
  status, out = _concurrently(server, bodies)[1]
  assert status == 200, out
  sampler = build_sampler(server.fm, SamplingConfig(cfg_scale=cfg, temperature=0.0),
                          server.config)
  want = sampler.sample_tokens(server.variables, jnp.asarray(labels, jnp.int32),
                               jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out["tokens"]), np.asarray(want))


def test_same_seed_same_tokens_alone_and_batched(server):
  req = {"labels": [3, 7, 7], "seed": 1234, "temperature": 1.0, "top_k": 3, "top_p": 0.9,
         "cfg_scale": 2.0}
  alone = _gen(server, **req)
  others = [{"labels": [i % 10, (i + 3) % 10], "seed": 50 + i, "format": "tokens",
             "cfg_scale": 1.0 + i % 3} for i in range(6)]
  results = _concurrently(server, others[:3] + [{**req, "format": "tokens"}] + others[3:])
  assert all(s == 200 for s, _ in results)
  np.testing.assert_array_equal(np.asarray(results[3][1]["tokens"]), alone)
  # The seed matters (so the equality above is not trivial), and so does the image index.
  assert not np.array_equal(_gen(server, **{**req, "seed": 1235}), alone)
  assert not np.array_equal(alone[1], alone[2])


def test_png_is_the_tokenizers_decoding_of_the_tokens(server):
  from arjax.evaluate.images import make_grid
  req = {"labels": [1, 2, 3], "seed": 7}
  tokens = _gen(server, **req)
  status, out, _ = post(server.url + "/generate", {**req, "format": "png"})
  assert status == 200 and out["format"] == "png" and (out["height"], out["width"]) == (7, 7)
  png = base64.b64decode(out["png"])
  images = np.asarray(server.fm.bind(server.variables).tokenizer.decode(jnp.asarray(tokens)))
  want = make_grid(images, ncol=3)[..., 0]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), want)
  status, raw, headers = post(server.url + "/generate", {**req, "format": "png"},
                              accept="image/png")
  assert status == 200 and headers["Content-Type"] == "image/png" and raw == png


BAD = [  # (body or raw bytes, the field the answer must name)
    ({"labels": [10]}, "labels"),                       # unknown class (10 classes: 0..9)
    ({"labels": [-1]}, "labels"),
    ({"labels": ["3"]}, "labels"),                      # wrong type
    ({"labels": [1.5]}, "labels"),
    ({"labels": [True]}, "labels"),
    ({"labels": 3}, "labels"),
    ({"labels": []}, "labels"),
    ({"seed": 1}, "labels"),                            # missing
    ({"labels": [1] * (MAX_IMAGES + 1)}, "labels"),     # oversize batch
    ({"labels": [1], "cfg_scale": -0.5}, "cfg_scale"),  # cfg < 0
    ({"labels": [1], "cfg_scale": "2"}, "cfg_scale"),
    (b'{"labels": [1], "cfg_scale": Infinity}', "cfg_scale"),
    (b'{"labels": [1], "temperature": NaN}', "temperature"),
    ({"labels": [1], "temperature": -1}, "temperature"),
    ({"labels": [1], "temperature": None}, "temperature"),
    ({"labels": [1], "top_k": 1.5}, "top_k"),
    ({"labels": [1], "top_k": True}, "top_k"),
    ({"labels": [1], "top_k": -2}, "top_k"),
    ({"labels": [1], "top_p": 0.0}, "top_p"),
    ({"labels": [1], "top_p": 1.5}, "top_p"),
    ({"labels": [1], "seed": -1}, "seed"),
    ({"labels": [1], "seed": 2 ** 31}, "seed"),
    ({"labels": [1], "seed": "7"}, "seed"),
    ({"labels": [1], "format": "gif"}, "format"),
    ({"labels": [1], "prompt": "a cat"}, "prompt"),     # unknown field: refused, not ignored
    (b'{"labels": [1], ', "body"),                      # malformed JSON
    (b'\xff\xfe', "body"),
    ([1, 2], "body"),
]


@pytest.mark.parametrize("body,field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_requests_are_400_naming_the_field(server, body, field):
  raw = body if isinstance(body, bytes) else None
  status, out, _ = post(server.url + "/generate", body, raw=raw)
  assert status == 400 and out["field"] == field, out
  assert len(out["error"].splitlines()) == 1
  if field != "body":
    assert field in out["error"]


def test_bad_requests_leave_the_server_serving(server):
  assert get(server.url + "/health")[1]["status"] == "ok"
  assert _gen(server, labels=[4]).shape == (1, N)
