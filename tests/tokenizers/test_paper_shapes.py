"""Paper-shape tokenizer configs: parameter counts (eval_shape only) against the count of the
official PyTorch layer lists (LlamaGen vq_model.py, VAR vqvae.py/basic_vae.py, MAR vae.py),
written out here layer by layer, and LlamaGen's published 72M."""
import jax
import pytest

from arjax.config import load_config
from arjax.models import build_model
from arjax.core.functional import FunctionalModel


def conv(k, cin, cout):
  return k * k * cin * cout + cout


def gn(c):
  return 2 * c


def res(cin, cout):
  return gn(cin) + conv(3, cin, cout) + gn(cout) + conv(3, cout, cout) + (
      conv(1, cin, cout) if cin != cout else 0)


def attn(c):
  return gn(c) + 4 * conv(1, c, c)


def encoder(ch, mult, nrb, z_out, attn_last, img=3):
  n, c = conv(3, img, ch), ch
  for i, m in enumerate(mult):
    for _ in range(nrb):
      n += res(c, ch * m)
      c = ch * m
      n += attn(c) if (attn_last and i == len(mult) - 1) else 0
    n += conv(3, c, c) if i != len(mult) - 1 else 0
  n += res(c, c) + attn(c) + res(c, c)
  return n + gn(c) + conv(3, c, z_out)


def decoder(ch, mult, nrb, z_in, attn_last, img=3):
  c = ch * mult[-1]
  n = conv(3, z_in, c) + res(c, c) + attn(c) + res(c, c)
  for i in reversed(range(len(mult))):
    for _ in range(nrb + 1):
      n += res(c, ch * mult[i])
      c = ch * mult[i]
      n += attn(c) if (attn_last and i == len(mult) - 1) else 0
    n += conv(3, c, c) if i != 0 else 0
  return n + gn(c) + conv(3, c, img)


F16 = [1, 1, 2, 2, 4]
OFFICIAL = {
    # VQModel: encoder, decoder (attention at the lowest level in both), quant_conv 256 -> 8,
    # post_quant_conv 8 -> 256, embedding 16384 x 8.
    "llamagen_vq16": (encoder(128, F16, 2, 256, True) + decoder(128, F16, 2, 256, True)
                      + conv(1, 256, 8) + conv(1, 8, 256) + 16384 * 8),
    # VQVAE(ch=160, z_channels=32, vocab 4096): quant/post_quant 3x3 convs, 4 shared phi convs.
    "var_vqvae": (encoder(160, F16, 2, 32, True) + decoder(160, F16, 2, 32, True)
                  + 2 * conv(3, 32, 32) + 4096 * 32 + 4 * conv(3, 32, 32)),
    # AutoencoderKL(embed_dim=16): double_z encoder (attention at 16x16), decoder without
    # level attention, quant_conv 32 -> 32 and post_quant_conv 16 -> 16 (1x1).
    "mar_kl16": (encoder(128, F16, 2, 32, True) + decoder(128, F16, 2, 16, False)
                 + conv(1, 32, 32) + conv(1, 16, 16)),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_counts_match_the_official_architectures(name):
  config = load_config(f"configs/tokenizers/{name}.py")
  fm = FunctionalModel.abstract(lambda: build_model(config))
  counts = {k: sum(int(x.size) for x in jax.tree.leaves(v)) for k, v in fm.abstract_params.items()}
  tokenizer = sum(v for k, v in counts.items() if k != "discriminator")
  assert tokenizer == OFFICIAL[name]
  if name == "llamagen_vq16":
    assert round(tokenizer / 1e6) == 72  # LlamaGen README: vq_ds16_c2i, 72M.
