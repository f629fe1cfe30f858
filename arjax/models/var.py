"""VAR: class-conditional next-scale prediction (Tian et al. 2024, "Visual Autoregressive
Modeling: Scalable Image Generation via Next-Scale Prediction"), the layout of the released code
(FoundationVision/VAR models/var.py, basic_var.py) so that its weights load
(`python -m arjax.convert var`).

Tokens: the multi-scale residual quantizer's K token maps of sides h_1 .. h_K (order 'scales',
N = sum h_k^2; 680 at 1..16). The N slots the transformer sees:

  scale 1:     class embedding c + a learned start position (pos_start)
  scale k > 1: Linear(area(f_hat_{<k}, h_k)), the running reconstruction of scales < k
               area-downsampled to side h_k (`MultiScaleVQ.next_scale_inputs`)
  every slot:  + absolute position (pos_embed [N, C]) + level embedding of its scale

and every slot predicts its own token. The inputs come from the frozen multi-scale quantizer of
the model's tokenizer (its codebook and phi convs; never trained here): the tokenizer handed in
by the entry point (`build_model(config, tokenizer=...)`: a trained autoencoder run, or the
'cached' tokenizer with that run as decoder), so training reads token caches or images.

Blocks (depth d, width C = 64 d, d heads of 64): per-block adaLN from the class embedding
(Linear(silu(c)) -> gamma1, gamma2, scale1, scale2, shift1, shift2; VAR's released models use
shared_aln=False), LayerNorm without affine (eps 1e-6),
  x += drop_path(gamma1 * attn(ln(x) (1 + scale1) + shift1))
  x += drop_path(gamma2 * mlp(ln(x) (1 + scale2) + shift2))          mlp: GELU(tanh), 4C
attention: qkv without k bias, q and k L2-normalised, q times exp(min(s_h, log 100)) with a
learned per-head s_h, logits unscaled; block-causal over scales (or Markovian). Head:
Linear(ln(h) (1 + scale) + shift) with its own adaLN. Loss: cross-entropy over the N tokens,
each weighted 1/N; the class is dropped to the null class with probability class_dropout.
Drop path grows linearly over the blocks to 0.1 d / 24 (negative `drop_path`: that default).

Decoding (`decode_scale`) runs one scale's h_k^2 queries against a KV cache of the N slots
(arjax.sampling.next_scale).

Legend: B batch, N tokens (= slots), K scales, C width, H heads, Kh head dim (C / H),
V vocabulary, Dv code dim of the quantizer, s side of a scale.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.heads.base import token_metrics
from arjax.heads.categorical import Categorical, CategoricalFields
from arjax.kernels import attention
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.nn.layers import make_param
from arjax.orders import build_order, register_support
from arjax.tokenizers import build_tokenizer
from arjax.registry import ranged, read_fields

MAX_SCALE_MUL = math.log(100.0)  # VAR clamps the learned log attention scale here.


@dataclasses.dataclass(frozen=True)
class VarFields(GeneratorFields):
  """`config.model` of 'var' (the scales are config.order.scales; sub-node: model.head, which
  must be 'categorical')."""
  SUBNODES = {"head": None}
  depth: int = 16                 # d: blocks; width 64 d and d heads unless set below.
  width: int = 0                  # C (0: 64 * depth).
  num_heads: int = 0              # H (0: depth).
  mlp_ratio: float = 4.0          # MLP width / C.
  drop_path: float = ranged(-1.0, lo=0.0, hi=1.0, hi_open=True, also=(-1.0,))
  # largest drop-path rate (-1: 0.1 * depth / 24, VAR's).
  code_dim: int = 32              # Dv, channels of the quantizer's f_hat (VAR's Cvae).
  norm_eps: float = 1e-6          # LayerNorm epsilon.
  init_std: float = -1.0          # init std of linears (< 0: sqrt(1 / (3 C)), VAR's).


def _normal(std):
  return nnx.initializers.truncated_normal(stddev=std, lower=-2.0 / max(std, 1e-12),
                                           upper=2.0 / max(std, 1e-12))


class _Linear(nnx.Module):
  """y = x W + b, W [in, out] (PyTorch nn.Linear's weight transposed)."""

  def __init__(self, n_in: int, n_out: int, *, rngs, axes, std: float, bias: bool = True):
    self.kernel = make_param(rngs, _normal(std), (n_in, n_out), axes)
    self.bias = make_param(rngs, nnx.initializers.zeros, (n_out,), axes[-1:]) if bias else None

  def __call__(self, x):
    y = jnp.dot(x, self.kernel[...])
    return y if self.bias is None else y + self.bias[...]


def layer_norm(x, eps: float):
  """LayerNorm without affine parameters (VAR's ln_wo_grad)."""
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(x, eps: float = 1e-12):
  """PyTorch's F.normalize: x / max(|x|, eps) over the last axis."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, -1, keepdims=True)), eps)


class VarBlock(nnx.Module):
  """One AdaLNSelfAttn block: x [B, L, C], cond [B, C] -> [B, L, C]."""

  def __init__(self, c: int, heads: int, mlp: int, *, rngs, std: float, depth: int,
               drop_path: float, eps: float):
    self.heads, self.c, self.eps, self.drop_path = heads, c, eps, drop_path
    out_std = std / math.sqrt(2 * depth)  # VAR divides proj and fc2 by sqrt(2 depth).
    self.ada_lin = _Linear(c, 6 * c, rngs=rngs, axes=("embed", "mlp"), std=std * 0.5)
    self.qkv = _Linear(c, 3 * c, rngs=rngs, axes=("embed", "mlp"), std=std, bias=False)
    self.q_bias = make_param(rngs, nnx.initializers.zeros, (c,), ("mlp",))
    self.v_bias = make_param(rngs, nnx.initializers.zeros, (c,), ("mlp",))
    self.scale_mul = make_param(rngs, nnx.initializers.constant(math.log(4.0)), (heads,),
                                (None,))
    self.proj = _Linear(c, c, rngs=rngs, axes=("mlp", "embed"), std=out_std)
    self.fc1 = _Linear(c, mlp, rngs=rngs, axes=("embed", "mlp"), std=std)
    self.fc2 = _Linear(mlp, c, rngs=rngs, axes=("mlp", "embed"), std=out_std)

  def _drop(self, y, key):
    if key is None or self.drop_path <= 0:
      return y
    keep = jax.random.bernoulli(key, 1.0 - self.drop_path, (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(keep, y / (1.0 - self.drop_path), 0.0)

  def attend(self, h, mask: MaskSpec, cache=None, index: int = 0):
    """h [B, L, C] -> ([B, L, C], cache). cache: (k, v) [B, N, H, Kh], written at `index`."""
    b, l, c = h.shape
    kh = c // self.heads
    bias = jnp.concatenate([self.q_bias[...], jnp.zeros((c,), h.dtype), self.v_bias[...]])
    qkv = (self.qkv(h) + bias).reshape(b, l, 3, self.heads, kh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    mul = jnp.exp(jnp.minimum(self.scale_mul[...], MAX_SCALE_MUL))
    q = l2_normalize(q) * mul[:, None]
    k = l2_normalize(k)
    if cache is not None:
      ck, cv = cache
      ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
      cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
      cache, k, v = (ck, cv), ck, cv
    out = attention(q, k, v, mask, scale=1.0).reshape(b, l, c)
    return self.proj(out), cache

  def __call__(self, x, cond, mask: MaskSpec, *, cache=None, index: int = 0, key=None):
    ada = self.ada_lin(jax.nn.silu(cond)).reshape(-1, 1, 6, self.c)
    gamma1, gamma2, scale1, scale2, shift1, shift2 = [ada[:, :, i] for i in range(6)]
    keys = (None, None) if key is None else jax.random.split(key)
    h = layer_norm(x, self.eps) * (1.0 + scale1) + shift1
    a, cache = self.attend(h, mask, cache, index)
    x = x + self._drop(a * gamma1, keys[0])
    h = layer_norm(x, self.eps) * (1.0 + scale2) + shift2
    f = self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))
    x = x + self._drop(f * gamma2, keys[1])
    return x, cache


class VarHead(nnx.Module):
  """h [B, L, C], cond [B, C] -> Categorical(logits float32 [B, L, V]) (AdaLNBeforeHead)."""

  token_shape = ()
  token_dtype = jnp.int32
  sample_options = ("top_k", "top_p")

  def __init__(self, c: int, vocab: int, *, rngs, std: float, eps: float,
               label_smoothing: float = 0.0):
    self.c, self.eps, self.label_smoothing = c, eps, label_smoothing
    self.ada_lin = _Linear(c, 2 * c, rngs=rngs, axes=("embed", "mlp"), std=std * 0.5)
    self.proj = _Linear(c, vocab, rngs=rngs, axes=("embed", "vocab"), std=std * 0.02)

  def __call__(self, h, cond) -> Categorical:
    ada = self.ada_lin(jax.nn.silu(cond)).reshape(-1, 1, 2, self.c)
    h = layer_norm(h, self.eps) * (1.0 + ada[:, :, 0]) + ada[:, :, 1]
    return Categorical(self.proj(h).astype(jnp.float32), label_smoothing=self.label_smoothing)


def run_scale(model, k: int, inputs, labels, caches, mask=None):
  """One scale of KV-cached next-scale decoding, shared by VAR and FlowAR (any model with
  `cond`, `pos_start`, `word_embed`, `level_embed`, `pos_embed`, `order` and `blocks`): scale
  k (from 0, static) reads the class token + start position (k = 0) or Linear(inputs
  [B, h_k^2, Dv]), plus its level and position embeddings, through every block, under `mask`
  (None: the order's decode mask of scale k). Returns
  (hidden states [B, h_k^2, C], the caches with the scale's keys and values written, the
  class condition [B, C])."""
  a, e = model.order.bounds[k]
  cond = model.cond(labels)
  if k == 0:
    x = cond[:, None] + model.pos_start[...][None]
  else:
    x = model.word_embed(inputs.astype(jnp.float32))
  x = x + (model.level_embed[...][k] + model.pos_embed[...][a:e])[None]
  if mask is None:
    mask = model.order.decode_mask(k)
  out = []
  for blk, cache in zip(model.blocks, caches):
    x, cache = blk(x, cond, mask, cache=cache, index=a)
    out.append(cache)
  return x, out, cond


def find_scale_quantizer(tokenizer, where: str = "the model's tokenizer"):
  """The multi-scale quantizer (arjax.tokenizers.quantizers.multiscale.MultiScaleVQ, frozen)
  behind a tokenizer: the quantizer itself, an autoencoder module's, a trained tokenizer run's
  (an object with `fm` and `variables`, arjax.loading.TrainedTokenizer) or the decoder's of a
  'cached' tokenizer. Raises ValueError saying what is missing."""
  seen = tokenizer
  for _ in range(4):
    if seen is None:
      break
    if hasattr(seen, "next_scale_inputs") and hasattr(seen, "scales"):
      return seen
    q = getattr(seen, "quantizer", None)
    if q is not None and hasattr(q, "next_scale_inputs"):
      return q
    if hasattr(seen, "fm") and hasattr(seen, "variables"):
      q = getattr(seen.fm.bind(seen.variables), "quantizer", None)
      if q is not None and hasattr(q, "next_scale_inputs"):
        return q
      raise ValueError(f"{where} decodes through a tokenizer run without a multi-scale "
                       f"quantizer (model.quantizer.name must be 'multiscale')")
    seen = getattr(seen, "decoder", None)
  raise ValueError(f"{where} ({type(tokenizer).__name__}) has no multi-scale quantizer: VAR "
                   "reads its inputs through the frozen tokenizer run (set tokenizer.checkpoint "
                   "to a 'multiscale' autoencoder run and load with arjax.load, or pass "
                   "tokenizer=... to build_model)")


class VAR(nnx.Module):
  """See the module docstring."""

  FIELDS = VarFields  # a subclass (flexvar, hmar) reads its own, VAR's plus its additions.

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(self.FIELDS, config)
    head_name = config.model.get("head", {}).get("name", "categorical")
    if head_name != "categorical":
      raise ValueError(f"model 'var' predicts codebook indices: model.head.name must be "
                       f"'categorical', got {head_name!r}")
    head = read_fields(CategoricalFields, config.model.get("head"), "head 'categorical'")
    if m.token_dropout:
      raise ValueError(f"model 'var' has no token dropout (its inputs are f_hat maps): "
                       f"model.token_dropout={m.token_dropout} must be 0")
    self.tokenizer = build_tokenizer(config)
    self.order = build_order(config, self.tokenizer)
    if self.order.name != "scales":
      raise ValueError(f"model {config.model.name!r} runs order 'scales', got "
                       f"order.name={self.order.name!r}")
    c = m.width or 64 * m.depth
    heads = m.num_heads or m.depth
    if c % heads:
      raise ValueError(f"model.width={c} is not divisible by model.num_heads={heads}")
    self.width, self.num_heads, self.depth = c, heads, m.depth
    self.code_dim = m.code_dim
    self.num_classes = m.num_classes
    self.null_class = m.num_classes
    self.class_dropout = m.class_dropout
    self.norm_eps = m.norm_eps
    self.num_tokens = self.order.num_tokens
    self.scales = self.order.scales
    std = m.init_std if m.init_std > 0 else math.sqrt(1.0 / c / 3.0)
    first = self.scales[0] ** 2
    self.word_embed = _Linear(m.code_dim, c, rngs=rngs, axes=(None, "embed"), std=std)
    self.class_embed = make_param(rngs, _normal(std), (m.num_classes + 1, c), (None, "embed"))
    self.pos_start = make_param(rngs, _normal(std), (first, c), (None, "embed"))
    self.pos_embed = make_param(rngs, _normal(std), (self.num_tokens, c), (None, "embed"))
    self.level_embed = make_param(rngs, _normal(std), (len(self.scales), c), (None, "embed"))
    rate = m.drop_path if m.drop_path >= 0 else 0.1 * m.depth / 24
    rates = [rate * i / max(m.depth - 1, 1) for i in range(m.depth)]
    self.drop_path = rate
    self.blocks = nnx.List([VarBlock(c, heads, int(round(c * m.mlp_ratio)), rngs=rngs, std=std,
                                     depth=m.depth, drop_path=rates[i], eps=m.norm_eps)
                            for i in range(m.depth)])
    self.head = VarHead(c, self.tokenizer.vocab_size, rngs=rngs, std=std, eps=m.norm_eps,
                        label_smoothing=head.label_smoothing)
    self.rngs = rngs

  # -- the frozen quantizer ------------------------------------------------------------------------
  def scale_quantizer(self):
    """The tokenizer's multi-scale quantizer, checked against this model's scales and code dim."""
    q = find_scale_quantizer(self.tokenizer)
    if tuple(q.scales) != tuple(self.scales):
      raise ValueError(f"generator scales order.scales={list(self.scales)} differ from the "
                       f"tokenizer's quantizer scales {list(q.scales)}")
    if int(q.code_dim) != self.code_dim:
      raise ValueError(f"model.code_dim={self.code_dim} differs from the tokenizer's quantizer "
                       f"code_dim={q.code_dim}")
    return q

  def next_scale_inputs(self, tokens):
    """tokens int32 [B, N] -> the frozen teacher-forcing inputs [B, N - h_1^2, Dv]."""
    return jax.lax.stop_gradient(self.scale_quantizer().next_scale_inputs(tokens))

  # -- the forward pass ---------------------------------------------------------------------------
  def cond(self, labels):
    return jnp.take(self.class_embed[...], labels, axis=0)                        # [B, C]

  def embed(self, inputs, labels):
    """inputs [B, N - h_1^2, Dv] (f_hat inputs), labels [B] -> (x [B, N, C], cond [B, C])."""
    cond = self.cond(labels)
    sos = cond[:, None] + self.pos_start[...][None]
    x = jnp.concatenate([sos, self.word_embed(inputs.astype(jnp.float32))], 1)
    lvl = jnp.take(self.level_embed[...], self.order.level_ids, axis=0)
    return x + (lvl + self.pos_embed[...])[None], cond

  def hidden_inputs(self, inputs, labels, *, train: bool = False, key=None, mask=None):
    """Teacher-forced blocks from f_hat inputs: (final hidden [B, N, C], cond [B, C]). mask: a
    MaskSpec over the N slots replacing the order's training mask (HART's last-scale masking)."""
    x, cond = self.embed(inputs, labels)
    mask = self.order.train_mask() if mask is None else mask
    keys = [None] * self.depth if key is None else list(jax.random.split(key, self.depth))
    for blk, k in zip(self.blocks, keys):
      x, _ = blk(x, cond, mask, key=k if train else None)
    return x, cond

  def forward_inputs(self, inputs, labels, *, train: bool = False, key=None):
    """Teacher-forced forward from f_hat inputs: Categorical over [B, N]."""
    return self.head(*self.hidden_inputs(inputs, labels, train=train, key=key))

  def forward(self, tokens, labels, *, train: bool = False, key=None):
    """tokens int32 [B, N], labels int32 [B] -> Categorical over [B, N]."""
    return self.forward_inputs(self.next_scale_inputs(tokens), labels, train=train, key=key)

  def logits(self, tokens, labels, *, train: bool = False):
    return self.forward(tokens, labels, train=train).logits

  def batch_tokens(self, batch):
    if "tokens" in batch:
      return batch["tokens"]
    return self.tokenizer.encode(batch["image"])

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.batch_tokens(batch).astype(jnp.int32)
    if tokens.shape[1] != self.num_tokens:
      raise ValueError(f"model 'var' expects {self.num_tokens} tokens per image "
                       f"(order.scales={list(self.scales)}), the batch has {tokens.shape[1]}")
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    key = self.rngs.dropout() if train and self.drop_path > 0 else None
    dist = self.forward(tokens, labels, train=train, key=key)
    weights = None
    if "mask" in batch:  # padded evaluation batches
      weights = jnp.broadcast_to(batch["mask"][:, None], tokens.shape).astype(jnp.float32)
    # Every image has N tokens, so the mean over tokens weights each token 1/N (VAR's loss).
    loss, per_token = dist.loss(tokens, weights=weights)
    w = jnp.ones_like(per_token) if weights is None else weights
    return loss, token_metrics(dist, loss, per_token, tokens, w)

  # -- decoding ----------------------------------------------------------------------------------
  def init_cache(self, batch: int, dtype=jnp.float32,
                 num_tokens: Optional[int] = None) -> List[Tuple[jax.Array, jax.Array]]:
    """Per block (k, v) zeros [B, N, H, Kh]; N = num_tokens (a sampling scale list's, for a
    model with flexible scales) or the model's."""
    n = self.num_tokens if num_tokens is None else num_tokens
    shape = (batch, n, self.num_heads, self.width // self.num_heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.depth)]

  def decode_scale(self, k: int, inputs: Optional[jax.Array], labels, caches, order=None):
    """Scale k (from 0, static): inputs [B, h_k^2, Dv] (None at k = 0), labels [B] ->
    (Categorical over [B, h_k^2], caches with the scale's keys and values written). order:
    the sampling scale list's order; VAR's fixed tables admit only its own (the sampler's
    check_scales refuses others), so it is not read here."""
    del order
    dist, caches, _ = self.decode_scale_hidden(k, inputs, labels, caches)
    return dist, caches

  def decode_scale_hidden(self, k: int, inputs: Optional[jax.Array], labels, caches,
                          reveal_steps: Optional[jax.Array] = None):
    """As `decode_scale`, also returning the scale's final hidden states [B, h_k^2, C] (what a
    continuous head on the scale reads, HART). reveal_steps int32 [B, h_k^2] (HART's MaskGIT
    iterations on the last scale): a cell revealed at iteration t sees the scales before k and
    the cells of iterations <= t only, the attention HART's KV-cached iterations give."""
    mask = None
    if reveal_steps is not None:
      if self.order.markovian:
        raise ValueError("reveal_steps (MaskGIT iterations of a scale) need the block-causal "
                         "mask; order.markovian=True is not supported")
      a, e = self.order.bounds[k]
      steps = k + reveal_steps.astype(jnp.int32)
      before = jnp.broadcast_to(self.order.level_ids[:a][None], (steps.shape[0], a))
      n_cache = caches[0][0].shape[1]  # slots after the scale (unwritten) stay hidden
      after = jnp.full((steps.shape[0], n_cache - e), jnp.iinfo(jnp.int32).max, jnp.int32)
      mask = MaskSpec(kind="block_causal", q_block_ids=steps,
                      kv_block_ids=jnp.concatenate([before, steps, after], 1))
    x, caches, cond = run_scale(self, k, inputs, labels, caches, mask)
    return self.head(x, cond), caches, x

  def default_sampler(self) -> str:
    return "next_scale"


register_support("var", mask_kinds=("block",), orders=("scales",))


@MODELS.register("var", fields=VarFields)
def _build(config, *, rngs):
  return VAR(config, rngs=rngs)
