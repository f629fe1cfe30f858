"""Analytic FLOP count of the transformer generators (for MFU and `arjax.inspect`).

Counted: every matmul (2 FLOPs per multiply-add) of the projections, the SwiGLU, the head, and
attention's QK^T and PV over the full sequence (no causal discount; MaxText's convention is the
same for the forward pass). Embedding lookups, norms and softmax are ignored. Training is
3x the forward pass (forward + two backward matmuls per forward matmul).

Legend: L sequence length, D width, H heads, Hkv key/value heads, K head dim, F SwiGLU width,
V vocabulary, n layers.
"""
from __future__ import annotations

from typing import Dict

from arjax.nn.transformer import TransformerConfig


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int, vocab_size: int
                            ) -> Dict[str, float]:
  d, h, hkv, k, f = cfg.dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.hidden_dim
  proj = 2 * (d * h * k + 2 * d * hkv * k + h * k * d)
  attention = 2 * 2 * seq_len * h * k
  mlp = 2 * (2 if cfg.mlp == "gelu" else 3) * d * f  # GELU: fc1, fc2; SwiGLU: w1, w2, w3.
  ada = 2 * d * 6 * d if cfg.adaln else 0
  per_layer = proj + attention + mlp + ada
  head = 2 * d * vocab_size
  total = cfg.num_layers * per_layer + head
  return {"projections": cfg.num_layers * proj, "attention": cfg.num_layers * attention,
          "mlp": cfg.num_layers * mlp, "adaln": cfg.num_layers * ada, "head": head,
          "forward": float(total), "train": 3.0 * total}


def model_flops(config) -> Dict[str, float]:
  """FLOPs per token and per train step for a generator config."""
  from arjax.tokenizers import build_tokenizer
  tok = build_tokenizer(config)
  cfg = TransformerConfig.from_config(config.model.backbone)
  seq_len = tok.tokens_per_image  # [class, x_0 .. x_{N-2}]: N positions.
  per_token = forward_flops_per_token(cfg, seq_len, tok.vocab_size)
  tokens_per_step = config.train.batch_size * seq_len
  return {**{f"{k}_per_token": v for k, v in per_token.items()},
          "seq_len": seq_len, "tokens_per_step": tokens_per_step,
          "train_flops_per_step": per_token["train"] * tokens_per_step}
