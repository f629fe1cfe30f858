"""LlamaGen c2i checkpoints -> arjax: the converted model's logits equal a float64 numpy
transcription of LlamaGen's GPT forward (autoregressive/models/gpt.py: wqkv split, 2D RoPE on
adjacent channel pairs with a zero rotary table at the class position, causal attention,
SwiGLU, RMSNorm); the workdir loads and samples; wrong shapes and names are refused by name.

The released weights cannot be downloaded here, so the checkpoint is a random state dict with
LlamaGen's names and shapes.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from arjax.config import load_config
from arjax.convert.llamagen import llamagen_params
from arjax.convert.workdir import write_workdir
from arjax.models import build_model
from arjax.core.functional import FunctionalModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYERS, HEADS, DIM, VOCAB, GRID, CLASSES = 2, 2, 32, 16, 4, 10
OVERRIDES = [f"model.backbone.num_layers={LAYERS}", f"model.backbone.num_heads={HEADS}",
             f"model.backbone.dim={DIM}", "model.backbone.multiple_of=16",
             "model.backbone.dtype=float32", f"tokenizer.vocab_size={VOCAB}",
             f"tokenizer.grid={GRID}", f"model.num_classes={CLASSES}", "train.batch_size=8"]
HIDDEN = 96  # LlamaGen's find_multiple(int(2 * 4 * 32 / 3), 16)


def config():
  return load_config(os.path.join(ROOT, "configs/imagenet256/llamagen.py:size=B"), OVERRIDES)


def random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)
  k = DIM // HEADS
  sd = {"cls_embedding.embedding_table.weight": w(CLASSES + 1, DIM),
        "tok_embeddings.weight": w(VOCAB, DIM), "norm.weight": 1 + w(DIM),
        "output.weight": w(VOCAB, DIM),
        "freqs_cis": np.zeros((1 + GRID * GRID, k // 2, 2), np.float32)}  # a buffer, skipped.
  for i in range(LAYERS):
    p = f"layers.{i}."
    sd.update({p + "attention.wqkv.weight": w(3 * DIM, DIM), p + "attention.wo.weight": w(DIM, DIM),
               p + "feed_forward.w1.weight": w(HIDDEN, DIM),
               p + "feed_forward.w3.weight": w(HIDDEN, DIM),
               p + "feed_forward.w2.weight": w(DIM, HIDDEN),
               p + "attention_norm.weight": 1 + w(DIM), p + "ffn_norm.weight": 1 + w(DIM)})
  return sd


def llamagen_forward(sd, tokens, labels):
  """float64 numpy LlamaGen c2i forward in training mode: logits [B, N, V]."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  b, n = tokens.shape
  k = DIM // HEADS
  x = np.concatenate([sd["cls_embedding.embedding_table.weight"][labels][:, None],
                      sd["tok_embeddings.weight"][tokens[:, :-1]]], 1)            # [B, N, D]
  # precompute_freqs_cis_2d: K/4 frequencies per axis; rows first, then columns; zeros at cls.
  half = k // 2
  freqs = 1.0 / (10000.0 ** (np.arange(0, half, 2)[: half // 2] / half))
  t = np.arange(GRID)
  f = np.outer(t, freqs)
  grid = np.concatenate([np.broadcast_to(f[:, None], (GRID, GRID, f.shape[1])),
                         np.broadcast_to(f[None, :], (GRID, GRID, f.shape[1]))], -1)
  cache = np.stack([np.cos(grid), np.sin(grid)], -1).reshape(GRID * GRID, half, 2)
  cis = np.concatenate([np.zeros((1, half, 2)), cache])[:n]                        # [N, K/2, 2]

  def rope(v):  # v [B, N, H, K], adjacent channel pairs rotated.
    p = v.reshape(*v.shape[:-1], half, 2)
    c, s = cis[None, :, None, :, 0], cis[None, :, None, :, 1]
    return np.stack([p[..., 0] * c - p[..., 1] * s, p[..., 1] * c + p[..., 0] * s], -1
                    ).reshape(v.shape)

  def rms(v, wt):
    return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5) * wt

  mask = np.tril(np.ones((n, n), bool))
  for i in range(LAYERS):
    p = f"layers.{i}."
    h = rms(x, sd[p + "attention_norm.weight"])
    q, kk, v = np.split(h @ sd[p + "attention.wqkv.weight"].T, 3, -1)
    q, kk, v = (a.reshape(b, n, HEADS, k) for a in (q, kk, v))
    q, kk = rope(q), rope(kk)
    s = np.einsum("bqhk,bphk->bhqp", q, kk) / np.sqrt(k)
    s = np.where(mask, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhqp,bphk->bqhk", a, v).reshape(b, n, DIM)
    x = x + o @ sd[p + "attention.wo.weight"].T
    h = rms(x, sd[p + "ffn_norm.weight"])
    g = h @ sd[p + "feed_forward.w1.weight"].T
    x = x + ((g / (1 + np.exp(-g))) * (h @ sd[p + "feed_forward.w3.weight"].T)
             ) @ sd[p + "feed_forward.w2.weight"].T
  return rms(x, sd["norm.weight"]) @ sd["output.weight"].T


def test_converted_logits_equal_llamagens_forward():
  cfg = config()
  sd = random_state_dict()
  params = llamagen_params(sd, cfg)
  fm = FunctionalModel.abstract(lambda: build_model(cfg))
  model = fm.bind(jax.tree.map(np.asarray, params))
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, VOCAB, (3, GRID * GRID)).astype(np.int32)
  labels = np.array([0, 7, CLASSES], np.int32)  # CLASSES: the null class.
  got = np.asarray(model.logits(tokens, labels))
  want = llamagen_forward(sd, tokens, labels)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # The class token's zero rotation matters: an identity rotation gives other logits.
  cfg.model.backbone.rope_null = "identity"
  other = FunctionalModel.abstract(lambda: build_model(cfg)).bind(jax.tree.map(np.asarray, params))
  assert np.abs(np.asarray(other.logits(tokens, labels)) - want).max() > 1e-2


def test_scan_layout_conversion_matches_llamagens_forward():
  cfg = load_config(os.path.join(ROOT, "configs/imagenet256/llamagen.py:size=B"),
                    OVERRIDES + ["model.backbone.scan_layers=True"])
  sd = random_state_dict()
  params = llamagen_params(sd, cfg)
  assert params["backbone"]["blocks"]["attn"]["wq"]["kernel"].shape == (LAYERS, DIM, HEADS,
                                                                        DIM // HEADS)
  model = FunctionalModel.abstract(lambda: build_model(cfg)).bind(jax.tree.map(np.asarray, params))
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, VOCAB, (2, GRID * GRID)).astype(np.int32)
  labels = np.array([0, CLASSES], np.int32)
  np.testing.assert_allclose(np.asarray(model.logits(tokens, labels)),
                             llamagen_forward(sd, tokens, labels), rtol=2e-4, atol=2e-4)


def test_bad_checkpoints_are_refused_by_name():
  cfg = config()
  sd = random_state_dict()
  with pytest.raises(ValueError, match=r"layers.0.attention.wqkv.weight.*\(96, 64\).*\(96, 32\)"):
    bad = dict(sd)
    bad["layers.0.attention.wqkv.weight"] = np.zeros((96, 64), np.float32)
    llamagen_params(bad, cfg)
  with pytest.raises(KeyError, match="norm.weight"):
    llamagen_params({k: v for k, v in sd.items() if k != "norm.weight"}, cfg)
  with pytest.raises(ValueError, match="layers.2.attention.wo.weight"):
    llamagen_params(dict(sd, **{"layers.2.attention.wo.weight": sd["layers.0.attention.wo.weight"]}),
                    cfg)


def test_workdir_round_trip_and_cli(tmp_path):
  sd = random_state_dict()
  ckpt = str(tmp_path / "c2i_tiny.npz")
  np.savez(ckpt, **sd)
  workdir = str(tmp_path / "converted")
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "arjax.convert", "llamagen", "--checkpoint", ckpt,
                         "--size", "B", "--workdir", workdir,
                         *["--config." + o for o in OVERRIDES]], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["workdir"] == workdir
  import arjax
  from arjax.loading import resolve_step
  assert resolve_step(workdir) == 0
  _, variables, _ = arjax.load(workdir)  # no ImageNet and no optimizer needed to load it.
  want = llamagen_params(sd, config())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), want)
  # A second conversion into the same workdir is refused; a missing file is named.
  with pytest.raises(FileExistsError, match="already holds checkpoint 0"):
    write_workdir(config(), want, workdir)
  proc = subprocess.run([sys.executable, "-m", "arjax.convert", "llamagen", "--checkpoint",
                         str(tmp_path / "nope.pt"), "--workdir", str(tmp_path / "w2")], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and "nope.pt" in proc.stderr and "not found" in proc.stderr
