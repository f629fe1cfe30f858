"""FlexVAR class-conditional next-scale prediction without residuals at ImageNet 256 (Jiao et al.
2025, "FlexVAR: Flexible Visual Autoregressive Modeling without Residual Prediction").

  python -m arjax.inspect --config configs/imagenet256/flexvar.py:depth=16 --json
  python -m arjax.train --config configs/imagenet256/flexvar.py:depth=16 --workdir W \
      --config.tokenizer.checkpoint=FLEX_VAE_RUN --config.data.source=tfds:imagenet2012

Tokens: a multiscale tokenizer run with model.quantizer.residual=False (each scale quantized on
its own from the area-downsampled latent; FlexVAR's VQ has V = 8912 codes of dim 32 on a 16x16
latent). Training draws a scale list per step (FlexVAR's rule, arjax.orders.scale_lists: 5 % the
default list 1,2,3,4,5,6,8,10,13,16, else [1, 2] + 5 of 3..10 + 2 of 11..15 + [16], up to four
sides dropped, at most 680 tokens), so it reads images (or batch['latent']) through the frozen
tokenizer run; a token cache trains at the default list only. Blocks are VAR's (depth d, width
64 d, d heads); positions: one learnable 32x32 map area-interpolated to every side, no level
embedding. FID (README, 10 steps, cfg 2.5, top-k 900): d16 3.05, d20 2.41, d24 2.21; d24 at 13
steps 2.08. Sampling at any list, e.g. the README's 13 steps:
  sampler.sample_with_fhat(params, labels, rng, scales=[1,2,3,4,5,6,7,8,9,10,12,14,16]).
FlexVAR's CFG ramp is t = cfg * k / min(K - 1, 9) (VAR's up to 10 steps, then past cfg): the
'linear' schedule by steps with eval.cfg_steps_cap = 9 (cfg_scale = 1 + cfg; unclipped above 1,
arjax.sampling.guidance_schedule). Its per-side rule: sides above model.max_pn = 16 at t = cfg
and top-1, sides outside model.sampled_sides (1..6, 8, 10, 13, 16, 23, 24, 32) top-1.
`:smoke`: depth 2, width 32 on scales 1,2,3,4,5,7 of a 7x7 MNIST token map, lists of at most
104 tokens from [1, 2] + 2 of 3..4 + 1 of 5..6 + [7].
"""
from arjax.config import parse_arg, sibling_config

var = sibling_config(__file__, "var.py")

DEPTHS = (16, 20, 24)


def get_config(arg=None):
  args = parse_arg(arg, depth="16", size="")
  depth = args.size or args.depth
  if str(depth) not in {str(d) for d in DEPTHS}:
    key = "size" if args.size else "depth"
    raise ValueError(f"flexvar {key}={depth!r}; expected one of {list(DEPTHS)}")
  c = var.var_config(int(depth), smoke=args.smoke)
  c.model.name = "flexvar"
  c.model.pos_grid = 32
  c.model.random_scales = True
  c.tokenizer.vocab_size = 8912 if not args.smoke else c.tokenizer.vocab_size
  c.eval.cfg_scale = 1.0 + 2.5
  c.eval.cfg_steps_cap = 9  # FlexVAR's ratio = k / min(K - 1, 9).
  c.eval.top_k = 900
  c.eval.top_p = 1.0
  # The released sampler's per-side rule (next_scale sampler, model.sampling_rule): sides above
  # max_pn at t = cfg and top-1; sides outside the list top-1 at the ramp's t.
  c.model.max_pn = 16
  c.model.sampled_sides = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32]
  if args.smoke:
    c.model.pos_grid = 8
    c.model.first_scales = [1, 2]
    c.model.draw_lo = [3, 5]
    c.model.draw_hi = [4, 6]
    c.model.draw_count = [2, 1]
    c.model.max_tokens = 104
    c.eval.top_k, c.eval.top_p = 0, 1.0
  return c
