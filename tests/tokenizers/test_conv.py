"""VQGAN-style encoder/decoder: output shapes for each downsampling factor, and the error for an
image size the encoder cannot divide."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from arjax.tokenizers.conv import ConvConfig, ConvDecoder, ConvEncoder


@pytest.mark.parametrize("ch_mult,factor", [((1, 1, 1), 4), ((1, 1, 1, 1), 8),
                                            ((1, 1, 1, 1, 1), 16)])
def test_encoder_decoder_shapes_per_downsampling(ch_mult, factor):
  cfg = ConvConfig(ch=8, ch_mult=ch_mult, num_res_blocks=1, enc_attn=False, dec_attn=False,
                   mid_attn=False, num_groups=4)
  assert cfg.downsample == factor
  enc = ConvEncoder(cfg, 3, 4, rngs=nnx.Rngs(0))
  dec = ConvDecoder(cfg, 3, 4, rngs=nnx.Rngs(1))
  # eval_shape: the shapes without running the convolutions (one compile less per case).
  z = nnx.eval_shape(lambda: enc(jnp.zeros((2, 32, 48, 3))))
  assert z.shape == (2, 32 // factor, 48 // factor, 4)
  x = nnx.eval_shape(lambda: dec(jnp.zeros(z.shape)))
  assert x.shape == (2, 32, 48, 3)


def test_image_size_not_divisible_names_the_values():
  cfg = ConvConfig(ch=8, ch_mult=(1, 1, 1), num_res_blocks=1, enc_attn=False, dec_attn=False,
                   mid_attn=False, num_groups=4)
  enc = ConvEncoder(cfg, 1, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"image size 30x28 is not divisible by the encoder's "
                                       r"downsampling factor 4"):
    enc(jnp.zeros((1, 30, 28, 1)))


def test_encoder_output_depends_on_input():
  cfg = ConvConfig(ch=8, ch_mult=(1, 1), num_res_blocks=1, enc_attn=False, dec_attn=False,
                   mid_attn=True, num_groups=4)
  enc = ConvEncoder(cfg, 1, 4, rngs=nnx.Rngs(0))
  a = enc(jax.random.normal(jax.random.key(0), (1, 8, 8, 1)))
  b = enc(jax.random.normal(jax.random.key(1), (1, 8, 8, 1)))
  assert a.shape == (1, 4, 4, 4)
  assert float(jnp.abs(a - b).max()) > 1e-4
