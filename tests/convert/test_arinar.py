"""ARINAR's official head -> arjax's 'arinar' head: the same numbers on a golden fixture,
tests/convert/fixtures/arinar_tiny.npz, written by running Qinyu-Allen-Zhao/Arinar's
model_head/arhead_gmm.py (ARHead_gmm) once on a tiny configuration with fixed random weights
(every tensor perturbed, the adaLN gammas and the output layer included) and a flash-attention
stand-in (the official attention is causal only on its flash path; tests/convert/fixtures/
README.md).

- The official state dict maps onto the head's parameters one to one (`official_params`,
  below; every tensor used, every shape checked).
- Teacher forced on the fixture's z [6, 16] and tokens [6, 8]: the inner network's first input
  (cond_proj(z) + start token), the input sequence (+ position table) and every feature's GMM
  (mixture weights, means, log-variances) match the official ones, and so does the per-token NLL
  (the official NLL drops C/2 log 2 pi; arjax's includes it).
- Sampling: the official sample() (key/value cache, one feature per step) with its draw made
  greedy (the most likely component's mean) gives the tokens arjax's cached sampler gives at
  temperature 0.
- Tolerance: float32 here against the official float64 run of the same float16-exact weights,
  max |ours - official| <= 1e-5 x max |official| per output.
- The comparison can fail: zeroing the start token, exchanging the adaLN gammas of the attention
  and FFN branches, or exchanging the q and v biases each moves some output past the tolerance.
"""
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.heads.arinar import ARINARFields, ARINARHead
from tests.convert.fixtures_io import read_fixture, state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/convert/fixtures/arinar_tiny.npz")
RTOL = 1e-5


def official_params(sd, depth):
  """ARHead_gmm state dict {name: array} -> the pure parameter dict of arjax's head (`net`).

  torch Linear weight [out, in] -> kernel [in, out]; start_token [1, 1, W] -> [W];
  pos_embedding [1, C, W] -> [C, W]; blocks.i.attn.mat_qkv (no bias; q_bias / v_bias apart),
  blocks.i.ada_lin.1 -> blocks.i.ada (rows gamma1, gamma2, scale1, scale2, shift1, shift2 in
  both); head_nm.ada_lin.1 -> head_ada (scale, shift); head -> out (K means, K log-variances,
  K logits in both)."""
  used = set()

  def get(name):
    used.add(name)
    return np.asarray(sd[name], np.float32)

  def lin(name, bias=True):
    out = {"kernel": get(f"{name}.weight").T}
    if bias:
      out["bias"] = get(f"{name}.bias")
    return out

  blocks = {i: {"ada": lin(f"blocks.{i}.ada_lin.1"),
                "qkv": lin(f"blocks.{i}.attn.mat_qkv", bias=False),
                "q_bias": get(f"blocks.{i}.attn.q_bias"),
                "v_bias": get(f"blocks.{i}.attn.v_bias"),
                "proj": lin(f"blocks.{i}.attn.proj"),
                "fc1": lin(f"blocks.{i}.ffn.fc1"),
                "fc2": lin(f"blocks.{i}.ffn.fc2")} for i in range(depth)}
  net = {"input_proj": lin("input_proj"), "cond_proj": lin("cond_proj"),
         "start_token": get("start_token").reshape(-1), "pos_embedding": get("pos_embedding")[0],
         "blocks": blocks, "head_ada": lin("head_nm.ada_lin.1"), "out": lin("head")}
  assert used == set(sd), f"unused official tensors: {sorted(set(sd) - used)}"
  return {"net": net}


@pytest.fixture(scope="module")
def fx():
  return read_fixture(FIXTURE)


@pytest.fixture(scope="module")
def setup(fx):
  """(graphdef, mapped state, jitted run(state) -> dict of outputs)."""
  k, c, d, w, depth, heads = (int(v) for v in fx["meta_dims"])
  tok = types.SimpleNamespace(token_dim=c, vocab_size=0)
  fields = ARINARFields(num_components=k, width=w, depth=depth, num_heads=heads,
                        cfg_proposals=8)
  head = nnx.eval_shape(lambda: ARINARHead(d, tok, fields, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(head)
  pure = official_params(state_dict(fx), depth)
  jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail(f"{a.shape} {b.shape}"),
               pure, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  z = jnp.asarray(fx["z"])[None]            # [B = 1, L = 6, D]
  x = jnp.asarray(fx["target"])[None]       # [1, 6, C]

  @jax.jit
  def run(state):
    head = nnx.merge(graphdef, state)
    dist = head(z)
    logits, means, logvars = dist.feature_params(x)
    start, _, _ = head.net.conditioning(z[0])
    seq = jnp.concatenate([start[:, None], head.net.embed_feature(x[0, :, :-1])], 1)
    return dict(start=start, input=seq + head.net.pos_embedding[...],
                weight=jax.nn.softmax(logits[0], -1), mu=means[0], logvar=logvars[0],
                nll=dist.loss(x)[1][0] - 0.5 * c * math.log(2 * math.pi))
  return graphdef, state, run


def rel_err(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  assert ours.shape == official.shape, (ours.shape, official.shape)
  return float(np.abs(ours - official).max() / np.abs(official).max())


NAMES = ("start", "input", "weight", "mu", "logvar", "nll")


def test_teacher_forced_matches_official(fx, setup):
  _, state, run = setup
  out = run(state)
  # The fixture is not degenerate: mixtures are mixed, the later features see their prefix.
  assert fx["weight"].max() < 0.99 and fx["logvar"].std() > 0.3
  errs = {n: rel_err(out[n], fx[n]) for n in NAMES}
  assert max(errs.values()) <= RTOL, errs
  assert np.isclose(np.asarray(out["nll"]).mean(), fx["nll_mean"], rtol=RTOL, atol=0)


def test_greedy_sample_matches_official(fx, setup):
  graphdef, state, _ = setup
  z = jnp.asarray(fx["z"])[None]
  tokens = jax.jit(lambda s: nnx.merge(graphdef, s)(z).sample(jax.random.key(0),
                                                                temperature=0.0))(state)
  err = rel_err(tokens[0], fx["greedy"])
  assert err <= RTOL, err


def perturb(state, fn):
  pure = nnx.to_pure_dict(state)
  fn(pure["net"])
  new = jax.tree.map(lambda a: a, state)
  nnx.replace_by_pure_dict(new, pure)
  return new


def _zero_start(net):
  net["start_token"] = jnp.zeros_like(net["start_token"])


def _swap_gammas(net):   # ada rows gamma1 | gamma2 | ...: exchange the first two W-blocks.
  kern = net["blocks"][0]["ada"]["kernel"]
  w = kern.shape[1] // 6
  net["blocks"][0]["ada"]["kernel"] = jnp.concatenate([kern[:, w:2 * w], kern[:, :w],
                                                       kern[:, 2 * w:]], 1)


def _swap_qv_bias(net):
  b = net["blocks"][1]
  b["q_bias"], b["v_bias"] = b["v_bias"], b["q_bias"]


@pytest.mark.parametrize("fn", [_zero_start, _swap_gammas, _swap_qv_bias])
def test_a_wrong_mapping_fails(fx, setup, fn):
  _, state, run = setup
  out = run(perturb(state, fn))
  errs = {n: rel_err(out[n], fx[n]) for n in ("weight", "mu", "logvar", "nll")}
  assert max(errs.values()) > 100 * RTOL, errs
