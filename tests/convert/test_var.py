"""VAR checkpoints -> arjax: the converted VQ-VAE and generator match VAR's official code
(FoundationVision/VAR) on a golden fixture, tests/convert/fixtures/var_tiny.npz, written by
running that code once on a tiny configuration with fixed random weights (see
tests/convert/fixtures/README.md): latents, multi-scale tokens, f_hat and reconstruction of the
VQ-VAE; teacher-forcing inputs and logits of the generator; tokens, final f_hat and image of a
seeded `autoregressive_infer_cfg` (cfg 1.5, top-k 1). float32 throughout. A checkpoint of
another depth is refused listing the differing tensors; the CLI writes the two workdirs, and
arjax.load restores the generator with its VQ-VAE run.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.convert.var import tokenizer_config, vae_params, var_params
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.models.autoencoder import to_float
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.tokenizers import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/convert/fixtures/var_tiny.npz")
TOKENIZER = ["model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.image_size=8",
             "model.z_channels=8", "model.quantizer.code_dim=8",
             "model.quantizer.codebook_size=32", "model.quantizer.scales=[1,2,3,4]"]
GENERATOR = ["tokenizer.vocab_size=32", "tokenizer.grid=4", "tokenizer.scales=[1,2,3,4]",
             "order.scales=[1,2,3,4]", "model.depth=2", "model.width=64", "model.num_heads=2",
             "model.code_dim=8", "model.num_classes=10", "model.drop_path=0.0"]


class FrozenTokenizer:
  """What arjax.loading.TrainedTokenizer hands a generator: a frozen autoencoder (fm, variables)
  with its vocabulary, grid and token count, decoding tokens to images."""

  def __init__(self, fm, variables):
    m = fm.bind(variables)
    self.fm, self.variables = fm, variables
    self.vocab_size, self.grid, self.tokens_per_image = m.vocab_size, m.grid, m.tokens_per_image

  def decode(self, tokens):
    return self.fm.bind(self.variables).decode(tokens)


@pytest.fixture(scope="module")
def fx():
  with np.load(FIXTURE) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(fx):
  sd_vae = {k[4:]: v.astype(np.float32) for k, v in fx.items() if k.startswith("vae/")}
  sd_var = {k[4:]: v.astype(np.float32) for k, v in fx.items() if k.startswith("var/")}
  tconfig = tokenizer_config(TOKENIZER)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig))
  tparams = jax.tree.map(jnp.asarray, vae_params(sd_vae, tconfig))
  tok = FrozenTokenizer(tfm, tparams)
  config = load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"), GENERATOR)
  fm = FunctionalModel.abstract(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  params = jax.tree.map(jnp.asarray, var_params(sd_var, config))
  return dict(tconfig=tconfig, tfm=tfm, tparams=tparams, config=config, fm=fm, params=params,
              sd_var=sd_var, sd_vae=sd_vae)


def test_vqvae_matches_official(fx, converted):
  tfm = converted["tfm"]

  @jax.jit
  def run(params, images):
    ae = tfm.bind(params)
    f = ae.latents(to_float(images, 8, 3))
    tokens = ae.quantizer.encode(f)
    fhat = ae.quantizer.partial_reconstructions(tokens)[-1]
    return f, tokens, fhat, jnp.clip(ae.decode_latents(fhat), -1, 1)

  f, tokens, fhat, rec = run(converted["tparams"], jnp.asarray(fx["images"]))
  np.testing.assert_allclose(np.asarray(f), fx["vae_f"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(tokens), fx["vae_tokens"])
  np.testing.assert_allclose(np.asarray(fhat), fx["vae_fhat"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(rec), fx["vae_rec"], rtol=1e-5, atol=1e-5)


def test_generator_teacher_forcing_matches_official(fx, converted):
  fm = converted["fm"]

  @jax.jit
  def run(params, tokens, labels):
    model = fm.bind(params)
    return model.next_scale_inputs(tokens), model.forward(tokens, labels).logits

  inputs, logits = run(converted["params"], jnp.asarray(fx["vae_tokens"]),
                       jnp.asarray(fx["labels"]))
  np.testing.assert_allclose(np.asarray(inputs), fx["var_inputs"], rtol=1e-5, atol=1e-5)
  scale = np.abs(fx["var_logits"]).max()
  np.testing.assert_allclose(np.asarray(logits), fx["var_logits"], rtol=1e-5, atol=1e-5 * scale)


def test_next_scale_sampling_matches_autoregressive_infer_cfg(fx, converted):
  # VAR's cfg 1.5 ramp t = 1.5 k / (K - 1): arjax's linear-by-steps schedule at scale 2.5.
  sampling = SamplingConfig(cfg_scale=2.5, top_k=1)
  sampler = build_sampler(converted["fm"], sampling,
                          guidance=GuidanceSchedule("linear", 2.5, by="steps"))
  assert sampler.name == "next_scale"  # the model's default sampler.
  tokens, fhat = sampler.sample_with_fhat(converted["params"], fx["labels"], jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(tokens), fx["sample_tokens"])
  np.testing.assert_allclose(np.asarray(fhat), fx["sample_fhat"], rtol=1e-5, atol=1e-5)
  tfm = converted["tfm"]
  image = jax.jit(lambda p, f: (jnp.clip(tfm.bind(p).decode_latents(f), -1, 1) + 1) * 0.5)(
      converted["tparams"], fhat)
  np.testing.assert_allclose(np.asarray(image), fx["sample_image"], rtol=1e-5, atol=1e-5)


def test_a_checkpoint_of_another_depth_lists_the_differing_tensors(converted):
  config = load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"),
                       GENERATOR + ["model.depth=3"])
  with pytest.raises(ValueError, match=r"missing blocks\.2\.ada_lin\.1\.weight.*"
                                       r"missing blocks\.2\.attn\.mat_qkv\.weight"):
    var_params(converted["sd_var"], config)
  config = load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"),
                       GENERATOR + ["model.depth=1"])
  with pytest.raises(ValueError, match=r"unexpected blocks\.1\.ada_lin\.1\.bias"):
    var_params(converted["sd_var"], config)
  config = load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"),
                       GENERATOR + ["model.width=32"])
  with pytest.raises(ValueError, match=r"blocks\.0\.ada_lin\.1\.weight: checkpoint \(384, 64\), "
                                       r"config \(192, 32\)"):
    var_params(converted["sd_var"], config)


def test_cli_writes_workdirs_that_load_and_sample(fx, converted, tmp_path):
  import arjax
  from arjax.convert.__main__ import main
  np.savez(tmp_path / "var_tiny.npz", **converted["sd_var"])
  np.savez(tmp_path / "vae_tiny.npz", **converted["sd_vae"])
  work = str(tmp_path / "w")
  rc = main(["var", "--checkpoint", str(tmp_path / "var_tiny.npz"), "--vae",
             str(tmp_path / "vae_tiny.npz"), "--size", "16", "--workdir", work,
             "--config", os.path.join(ROOT, "configs/imagenet256/var.py")]
            + ["--vae_override=" + o for o in TOKENIZER] + ["--config." + o for o in GENERATOR])
  assert rc == 0
  fm, variables, config = arjax.load(work)
  assert config.tokenizer.checkpoint == os.path.join(work, "tokenizer")
  # The loaded generator holds the converted tensors (whose outputs the tests above check) and
  # reads its inputs through the VQ-VAE run written beside it.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               variables, converted["params"])
  q = fm.bind(variables).scale_quantizer()
  np.testing.assert_array_equal(np.asarray(q.codebook[...]),
                                converted["sd_vae"]["quantize.embedding.weight"])
