"""VAR's zero-shot editing in the 'next_scale' sampler (inpainting, outpainting, class-conditional
editing):

- the per-scale keep masks from a final-grid mask equal PyTorch's (fixture made with torch's
  F.interpolate by the rule of VAR's released demo; tests/sampling/fixtures/README.md);
- greedy (top-k 1) editing on the tiny VAR of tests/models/test_var.py equals a naive reference
  that recomputes the full forward pass at every scale, applies VAR's CFG ramp in numpy and
  replaces the kept cells with the given tokens after each scale; the kept cells hold the given
  tokens, and the given tokens of cells not kept change nothing;
- keeping every cell returns the given tokens and the tokenizer's reconstruction of them;
- bad input: `known` without `given` and given tokens of the wrong shape or range are named.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.next_scale import edit_masks
from tests.models.test_var import build, naive_greedy_cfg, tok  # noqa: F401  (tok: a fixture)

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "var_edit_masks.npz")
CFG = 1.5  # VAR's cfg; the schedule's scale is 1 + cfg.


def test_edit_masks_match_pytorch_bilinear_rule():
  f = np.load(FIXTURE)
  got = edit_masks(f["masks"], [int(s) for s in f["scales"]])
  np.testing.assert_array_equal(got, f["keep"])
  assert 0 < f["keep"].mean() < 1  # the fixture keeps some cells and drops others


@pytest.fixture(scope="module")
def var(tok):  # noqa: F811
  _, fm, params = build(tok)
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0 + CFG, top_k=1),
                          guidance=GuidanceSchedule("linear", 1.0 + CFG, by="steps"))
  return fm, params, sampler


def test_greedy_editing_equals_naive_reference(var, tok):  # noqa: F811
  fm, params, sampler = var
  labels = np.array([2, 6, 9])
  region = np.zeros((4, 4), bool)
  region[:, :2] = True                      # keep the left half (inpaint the right half)
  known = np.broadcast_to(edit_masks(region, [1, 2, 3, 4]), (3, 30))
  given = np.asarray(jax.random.randint(jax.random.key(7), (3, 30), 0, 32), np.int32)
  tokens, fhat = sampler.sample_with_fhat(params, labels, jax.random.key(0), known=region,
                                          given=given)
  tokens = np.asarray(tokens)
  want_tokens, want_fhat = naive_greedy_cfg(fm, params, tok, labels, CFG, known, given)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(np.asarray(fhat), want_fhat, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(tokens[known], given[known])
  assert (tokens[~known] != given[~known]).any()   # the free cells are the model's
  # The given tokens of the cells not kept are never read.
  other = np.where(known, given, (given + 11) % 32)
  again = sampler.sample_tokens(params, jnp.asarray(labels), jax.random.key(0), known=region,
                                given=other)
  np.testing.assert_array_equal(np.asarray(again), tokens)
  # Unconstrained sampling differs (the kept cells steer the free ones at some scale).
  free = np.asarray(sampler.sample_tokens(params, jnp.asarray(labels), jax.random.key(0)))
  assert (free != tokens).any()


def test_keeping_every_cell_returns_the_given_image(var, tok):  # noqa: F811
  fm, params, sampler = var
  given = np.asarray(jax.random.randint(jax.random.key(3), (2, 30), 0, 32), np.int32)
  tokens, fhat = sampler.sample_with_fhat(params, np.array([1, 4]), jax.random.key(1),
                                          known=np.ones(30, bool), given=given)
  np.testing.assert_array_equal(np.asarray(tokens), given)
  want = tok.fm.bind(tok.variables).quantizer.partial_reconstructions(jnp.asarray(given))[-1]
  np.testing.assert_allclose(np.asarray(fhat), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bad_edit_inputs_are_named(var):
  _, params, sampler = var
  labels, key = jnp.array([1, 2]), jax.random.key(0)
  with pytest.raises(ValueError, match=r"`given` is missing"):
    sampler.sample_tokens(params, labels, key, known=np.ones(30, bool))
  with pytest.raises(ValueError, match=r"given must be the edited image's multi-scale tokens, "
                                       r"integer \[2, 30\]; got int32\[2, 16\]"):
    sampler.sample_tokens(params, labels, key, known=np.ones((4, 4), bool),
                          given=np.zeros((2, 16), np.int32))
  with pytest.raises(ValueError, match=r"given tokens must be in \[0, 32\); got \[0, 40\]"):
    sampler.sample_tokens(params, labels, key, known=np.ones(30, bool),
                          given=np.concatenate([np.zeros((2, 1), np.int32),
                                                np.full((2, 29), 40, np.int32)], 1))
  with pytest.raises(ValueError, match=r"inpainting mask `known` has shape \(29,\)"):
    sampler.sample_tokens(params, labels, key, known=np.ones(29, bool),
                          given=np.zeros((2, 30), np.int32))
