"""Samplers of the text diffusion models: SDAR / Fast-dLLM with threshold 1.0 equal
one-token-at-a-time decoding (a loop over the training-time 2L-mask forward pass), cached block
decoding equals recomputation, the AR sampler equals a recomputing greedy loop, bad options name
their field."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.core.functional import FunctionalModel
from arjax.models.diffusion_lm import DiffusionLM, DiffusionLMFields
from arjax.nn.transformer import TransformerConfig
from arjax.sampling import SAMPLERS, SamplingConfig
from arjax.sampling.diffusion_lm import DecodeOptions

V, L, B = 5, 8, 3
BACKBONE = TransformerConfig(num_layers=2, num_heads=2, dim=32, mlp_dim=64, position="rope1d")


def make(objective, block_size=4):
  fields = DiffusionLMFields(objective=objective, vocab_size=V, seq_len=L, block_size=block_size)
  fm = FunctionalModel(DiffusionLM(fields, BACKBONE, rngs=nnx.Rngs(0)))
  p = fm.initial_params()
  p["head"]["proj"]["kernel"] = p["head"]["proj"]["kernel"] * 100.0  # peaked, context-dependent
  return fm, p


@pytest.fixture(scope="module")
def bd3():
  return make("bd3lm")


def one_at_a_time(fm, params, block, sub_block):
  """Greedy decoding revealing the single most confident masked token of the current
  (sub-)block per forward pass; logits from the training pass over [x_t, x_0] (2L mask)."""
  model = fm.bind(params)
  logits_fn = jax.jit(lambda xt, x0: model.bd3_logits(xt, x0, block))
  tokens = np.full((B, L), V, np.int32)
  for start in range(0, L, block):
    for _ in range(block):
      logits = np.asarray(logits_fn(jnp.asarray(tokens), jnp.asarray(tokens)), np.float64)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      for r in range(B):
        cand = [i for i in range(start, start + block) if tokens[r, i] == V]
        sub0 = (cand[0] - start) // sub_block
        cand = [i for i in cand if (i - start) // sub_block == sub0]
        i = max(cand, key=lambda i: p[r, i].max())
        tokens[r, i] = int(p[r, i].argmax())
  return tokens


def run(name, fm, params, **opts):
  s = SAMPLERS.get(name)(fm, SamplingConfig(temperature=0.0, name=name),
                         decode=DecodeOptions(**opts))
  tokens, nfe = s.sample(params, jax.random.key(0), B)
  return np.asarray(tokens), int(nfe)


def test_threshold_one_is_one_token_at_a_time(bd3):
  fm, params = bd3
  ref = one_at_a_time(fm, params, 4, 4)
  tok, nfe = run("sdar", fm, params, strategy="dynamic", threshold=1.0, steps=4)
  np.testing.assert_array_equal(tok, ref)
  assert nfe == L + L // 4          # one pass per token plus one K/V write per block
  tok, _ = run("fast_dllm", fm, params, threshold=1.0)
  np.testing.assert_array_equal(tok, ref)
  tok, _ = run("fast_dllm", fm, params, threshold=1.0, sub_block=2)
  np.testing.assert_array_equal(tok, one_at_a_time(fm, params, 4, 2))


@pytest.mark.parametrize("name,opts", [("sdar", dict(strategy="static", steps=2)),
                                       ("sdar", dict(strategy="dynamic", threshold=0.6, steps=2)),
                                       ("fast_dllm", dict(threshold=0.6, sub_block=2))])
def test_cached_block_decoding_equals_recomputation(bd3, name, opts):
  fm, params = bd3
  cached, nfe_c = run(name, fm, params, cache=True, **opts)
  recomputed, nfe_r = run(name, fm, params, cache=False, **opts)
  np.testing.assert_array_equal(cached, recomputed)
  assert nfe_c == nfe_r + L // 4 and nfe_r < L  # several tokens per pass


def test_text_ar_sampler_equals_greedy_recomputation():
  fm, params = make("ar")
  tok, nfe = run("text_ar", fm, params)
  model = fm.bind(params)
  f = jax.jit(model.ar_logits)
  ref = np.zeros((B, L), np.int32)
  for i in range(L):
    ref[:, i] = np.asarray(f(jnp.asarray(ref)))[:, i].argmax(-1)
  np.testing.assert_array_equal(tok, ref)
  assert nfe == L


def test_mdlm_sampler_fills_every_position():
  fm, params = make("mdlm", block_size=L)
  tok, nfe = run("mdlm", fm, params, steps=4)
  assert tok.min() >= 0 and tok.max() < V and nfe == 4


@pytest.mark.parametrize("name,opts,line", [
    ("sdar", dict(threshold=0.0), "sampling.threshold=0.0; expected a value in (0, 1]"),
    ("sdar", dict(threshold=1.5), "sampling.threshold=1.5; expected a value in (0, 1]"),
    ("fast_dllm", dict(threshold=-0.5), "sampling.threshold=-0.5; expected a value in (0, 1]"),
    ("sdar", dict(steps=0), "sampling.steps=0; expected an integer >= 1"),
    ("mdlm", dict(steps=-2), "sampling.steps=-2; expected an integer >= 1"),
    ("sdar", dict(block_size=3), "sampling.block_size=3 does not divide the sequence length 8")])
def test_bad_options_name_the_field(bd3, name, opts, line):
  """The whole message is this one line (the issue's bad input: threshold outside (0, 1], a
  step count below 1, a block size that does not divide the length)."""
  fm = bd3[0] if name != "mdlm" else make("mdlm", block_size=L)[0]
  with pytest.raises(ValueError) as e:
    SAMPLERS.get(name)(fm, SamplingConfig(name=name), decode=DecodeOptions(**opts))
  assert str(e.value) == line


def test_sampler_refuses_other_objective(bd3):
  fm, _ = bd3
  with pytest.raises(ValueError, match="text_ar"):
    SAMPLERS.get("text_ar")(fm, SamplingConfig(name="text_ar"))


def test_lrd_kl_stop():
  """LRD's rounds: lrd_max_rounds=1 is the hard-embedding pass alone (plain MDLM sampling);
  a KL stop every KL passes ends after one refinement (the first KL needs two predictions);
  a stop no KL reaches refines up to lrd_max_rounds at every step."""
  fm, params = make("mdlm", block_size=L)
  plain, nfe = run("mdlm", fm, params, steps=4)
  one, nfe_one = run("mdlm", fm, params, steps=4, lrd=True, lrd_max_rounds=1)
  np.testing.assert_array_equal(one, plain)
  assert nfe_one == nfe == 4
  _, nfe_stop = run("mdlm", fm, params, steps=4, lrd=True, lrd_kl_stop=1e9)
  assert nfe_stop == 4 * 2
  _, nfe_all = run("mdlm", fm, params, steps=4, lrd=True, lrd_kl_stop=0.0, lrd_max_rounds=3)
  assert nfe_all == 4 * 3
