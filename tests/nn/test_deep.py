"""Deep-model options of the transformer stack: scan over stacked layers equals the Python loop
(same parameters restacked), remat changes nothing numerically, the bf16 path stays within a
stated tolerance of float32, and the loop <-> scan parameter layouts round-trip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.inspect import inspect_config
from arjax.kernels.masks import MaskSpec
from arjax.kernels.reference import attention_reference
from arjax.nn.transformer import (REMAT_POLICIES, TransformerConfig, stack_block_params,
                                  unstack_block_params)
from tests.helpers import tiny_config, tiny_model

LAYERS = 3


def _config(**kw):
  return tiny_config(model__class_dropout=0.0, model__backbone__num_layers=LAYERS,
                     model__backbone__num_kv_heads=2, **kw)


@pytest.fixture(scope="module")
def setup():
  fm_loop, _ = tiny_model(_config())
  fm_scan, _ = tiny_model(_config(model__backbone__scan_layers=True))
  params = fm_loop.initial_params()
  n = fm_loop.bind(params).tokenizer.tokens_per_image
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, 4, size=(4, n)), jnp.int32),
           "label": jnp.asarray([1, 7, 10, 3], jnp.int32)}
  return fm_loop, fm_scan, params, batch


def loss_and_grads(fm, params, batch):
  return jax.jit(jax.value_and_grad(lambda p: fm.bind(p).loss(batch, train=False)[0]))(params)


def test_same_seed_gives_the_same_parameters_in_both_layouts(setup):
  fm_loop, fm_scan, params, _ = setup
  stacked = stack_block_params(params)
  scan_params = fm_scan.initial_params()
  assert jax.tree.structure(stacked) == jax.tree.structure(scan_params)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(scan_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert fm_loop.param_count() == fm_scan.param_count()
  wq = fm_scan.abstract_params["backbone"]["blocks"]["attn"]["wq"]["kernel"]
  assert wq.shape[0] == LAYERS
  assert fm_scan.axes["backbone"]["blocks"]["attn"]["wq"]["kernel"].axes[0] == "layers"


def test_scan_equals_loop_logits_and_grads(setup):
  fm_loop, fm_scan, params, batch = setup
  logits_loop = jax.jit(lambda p: fm_loop.bind(p).logits(batch["tokens"], batch["label"]))(params)
  logits_scan = jax.jit(lambda p: fm_scan.bind(p).logits(batch["tokens"], batch["label"]))(
      stack_block_params(params))
  np.testing.assert_allclose(np.asarray(logits_scan), np.asarray(logits_loop), atol=1e-5,
                             rtol=1e-5)
  loss_l, g_loop = loss_and_grads(fm_loop, params, batch)
  loss_s, g_scan = loss_and_grads(fm_scan, stack_block_params(params), batch)
  np.testing.assert_allclose(float(loss_s), float(loss_l), rtol=1e-6)
  flat_l = jax.tree_util.tree_leaves_with_path(stack_block_params(g_loop))
  flat_s = dict(jax.tree_util.tree_leaves_with_path(g_scan))
  assert len(flat_l) == len(flat_s)
  for path, g in flat_l:
    np.testing.assert_allclose(np.asarray(flat_s[path]), np.asarray(g), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("scan,policy", [(True, "nothing_saveable"),
                                         (False, "dots_with_no_batch_dims_saveable")])
def test_remat_changes_nothing_numerically(setup, scan, policy):
  fm_loop, fm_scan, params, batch = setup
  base_fm = fm_scan if scan else fm_loop
  p = stack_block_params(params) if scan else params
  fm_remat, _ = tiny_model(_config(model__backbone__scan_layers=scan,
                                   model__backbone__remat=policy))
  loss_fn = lambda fm: (lambda p: fm.bind(p).loss(batch, train=False)[0])
  # The rematerialised program really differs: it carries a checkpoint (remat) primitive.
  assert "remat" in str(jax.make_jaxpr(jax.grad(loss_fn(fm_remat)))(p))
  assert "remat" not in str(jax.make_jaxpr(jax.grad(loss_fn(base_fm)))(p))
  loss0, g0 = loss_and_grads(base_fm, p, batch)
  loss1, g1 = loss_and_grads(fm_remat, p, batch)
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_scan_cached_decoding_equals_full_recompute(setup):
  _, fm_scan, params, batch = setup
  p = stack_block_params(params)
  tokens, labels = batch["tokens"], batch["label"]
  full = jax.jit(lambda p: fm_scan.bind(p).logits(tokens, labels))(p)

  @jax.jit
  def cached(p):
    model = fm_scan.bind(p)
    caches = model.init_cache(tokens.shape[0])
    assert caches["k"].shape[0] == LAYERS  # one stacked cache, carried through the scan.
    first, caches = model.decode_prefix(labels, caches)   # head Distributions [B, T].
    rest, _ = model.decode_tokens(tokens[:, :-1], 0, caches)
    return jnp.concatenate([first.logits, rest.logits], 1)

  np.testing.assert_allclose(np.asarray(cached(p)), np.asarray(full), atol=1e-5, rtol=1e-5)


def test_scan_dropout_draws_per_layer_keys():
  fm, _ = tiny_model(_config(model__backbone__scan_layers=True,
                             model__backbone__resid_dropout=0.3))
  params = fm.initial_params()
  n = fm.bind(params).tokenizer.tokens_per_image
  batch = {"tokens": jnp.zeros((2, n), jnp.int32), "label": jnp.asarray([1, 2], jnp.int32)}
  loss = jax.jit(lambda p, key, train: fm.bind(p, key).loss(batch, train=train)[0],
                 static_argnums=2)
  a, b = loss(params, jax.random.key(0), True), loss(params, jax.random.key(1), True)
  again = loss(params, jax.random.key(0), True)
  assert float(a) == float(again) and abs(float(a) - float(b)) > 1e-4
  e0, e1 = loss(params, jax.random.key(0), False), loss(params, jax.random.key(1), False)
  assert float(e0) == float(e1)


def test_bf16_path_is_close_to_float32(setup):
  fm_loop, _, params, batch = setup
  fm_bf16, _ = tiny_model(_config(model__backbone__dtype="bfloat16"))

  def run(fm):
    model = fm.bind(params)
    return model.logits(batch["tokens"], batch["label"])

  ref = np.asarray(jax.jit(lambda: run(fm_loop))())
  got = jax.jit(lambda: run(fm_bf16))()
  assert got.dtype == jnp.float32  # logits from the f32-accumulated head matmul.
  # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %): over 3 blocks and the head the
  # largest logit error stays within 5 % of the largest logit (measured: 0.0035 of 0.23).
  err, scale = np.abs(np.asarray(got) - ref).max(), np.abs(ref).max()
  assert err < 0.05 * scale, (err, scale)
  assert err > 0  # the bf16 path really ran in bf16.


def test_residual_stream_is_float32_and_blocks_compute_in_bf16():
  fm, _ = tiny_model(_config(model__backbone__dtype="bfloat16"))
  params = fm.initial_params()
  n = fm.bind(params).tokenizer.tokens_per_image
  tokens = jnp.zeros((2, n), jnp.int32)
  labels = jnp.asarray([1, 2], jnp.int32)

  def hidden(p):
    model = fm.bind(p)
    x = jnp.concatenate([model.class_embed(labels)[:, None],
                         model.token_embed(tokens[:, :-1])], 1)
    return model.backbone(x, positions=model.order.input_positions(2),
                          mask=model.order.train_mask())[0]

  assert jax.eval_shape(hidden, params).dtype == jnp.float32
  jaxpr = jax.make_jaxpr(hidden)(params)
  # Every matmul inside the blocks (projections, MLP, attention) takes bf16 operands.
  dots = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
  assert len(dots) >= LAYERS * 7  # q, k, v, o, 3 MLP (+ 2 attention) per block.
  assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)


def _all_eqns(jaxpr):
  from jax.extend.core import jaxprs_in_params
  for e in jaxpr.eqns:
    yield e
    for sub in jaxprs_in_params(e.params):
      yield from _all_eqns(sub)


def test_reference_attention_bf16_operands_f32_accumulation():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=s) for s in [(2, 9, 4, 16), (2, 11, 2, 16), (2, 11, 2, 16)])
  spec = MaskSpec(kind="causal", q_offset=2)
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  jaxpr = jax.make_jaxpr(lambda q, k, v: attention_reference(q, k, v, spec))(*bf)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 2
  for e in dots:
    assert all(x.aval.dtype == jnp.bfloat16 for x in e.invars)  # no upcast of q, k, v.
    assert e.params["preferred_element_type"] == jnp.float32
  got = attention_reference(*bf, spec)
  assert got.dtype == jnp.bfloat16
  want = attention_reference(*[jnp.asarray(np.asarray(x, np.float32)) for x in bf], spec)
  # Same bf16 inputs: only the bf16 rounding of the probabilities and of the output differ
  # (relative 2^-8 each), outputs are O(1).
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=2e-2)


def test_layouts_round_trip_and_refuse_the_wrong_direction(setup):
  _, _, params, _ = setup
  stacked = stack_block_params(params)
  back = unstack_block_params(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  as_str = unstack_block_params(stacked, keys="str")
  assert sorted(as_str["backbone"]["blocks"]) == [str(i) for i in range(LAYERS)]
  np.testing.assert_array_equal(np.asarray(stack_block_params(as_str)["backbone"]["norm"]["scale"]),
                                np.asarray(params["backbone"]["norm"]["scale"]))
  with pytest.raises(ValueError, match="not in the loop layout"):
    stack_block_params(stacked)
  with pytest.raises(ValueError, match="already in the loop layout"):
    unstack_block_params(params)


def test_unknown_remat_policy_lists_the_known_ones():
  cfg = tiny_config(model__backbone__remat="everything")
  with pytest.raises(ValueError, match="model.backbone.remat='everything'; expected one of .*"
                                       "nothing_saveable"):
    TransformerConfig.from_config(cfg.model.backbone)
  assert set(REMAT_POLICIES.names()) == {"none", "nothing_saveable",
                                         "dots_with_no_batch_dims_saveable", "dots_saveable"}


def test_scan_layout_counts_the_same_parameters_at_paper_size():
  config = load_config("configs/imagenet256/llamagen.py:size=L")
  loop = inspect_config(config)["params"]
  config.unlock()
  config.model.backbone.scan_layers = True
  assert inspect_config(config)["params"] == loop


def test_nar_runs_its_blocks_in_the_scan_layout():
  """Models that run the blocks themselves (NAR) go through Transformer.run_blocks: the scan
  layout gives the loop layout's loss for the same parameters restacked."""
  kw = dict(model__name="nar", order__name="nar", tokenizer__resolution=4,
            model__class_dropout=0.0)
  fm_loop, _ = tiny_model(tiny_config(**kw))
  fm_scan, _ = tiny_model(tiny_config(model__backbone__scan_layers=True, **kw))
  params = fm_loop.initial_params()
  batch = {"tokens": jax.random.randint(jax.random.key(0), (2, 16), 0, 4),
           "label": jnp.asarray([3, 10], jnp.int32)}
  loss = lambda fm, p: jax.jit(lambda p: fm.bind(p).loss(batch, train=False)[0])(p)
  np.testing.assert_allclose(float(loss(fm_scan, stack_block_params(params))),
                             float(loss(fm_loop, params)), rtol=1e-6)
