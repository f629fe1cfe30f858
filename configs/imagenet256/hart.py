"""HART class-conditional hybrid next-scale prediction at ImageNet 256 (Tang et al. 2024; the
released HARTForC2IConfig of mit-han-lab/hart): VAR's generator (configs/imagenet256/var.py, depths
16 / 20 / 24 / 30, width 64 d) plus the residual diffusion head on the last scale (MAR's
SimpleMLPAdaLN, width 1024, depth 6, diffusion_batch_mul 4, 8 DDPM sampling steps, cosine).

  python -m arjax.inspect --config configs/imagenet256/hart.py:depth=16 --json
  python -m arjax.train --config configs/imagenet256/hart.py:depth=16 --workdir W \
      --config.tokenizer.checkpoint=HYBRID_VAE_RUN --config.data.source=tfds:imagenet2012

Tokens: a multiscale tokenizer run with model.quantizer.hybrid=True (configs/tokenizers/
hart_hybrid.py at MNIST scale); the generator reads images through that frozen run (tokens and
the continuous residual f - f_hat_discrete), or batches with 'tokens' and 'residual'.
Last scale: MAR-style masking in training (mask_last_scale; model.mask_last_scale=False trains
it causally as VAR), HART's MaskGIT iterations at sampling (num_maskgit_iters, 1 as HART's
sample.py), the drawn q_K filtered by top-k 600 / top-p 0.96 (condition_top_k / _p).
Loss: CE + diff_weight (1.0, assumed: HART's training script is not released) x diffusion loss.
The released code has no ImageNet generator config or count (its models are text-to-image at
1024 px); the parameter count is VAR's at the same depth plus the residual head (checked in
tests/test_configs.py as that sum).
`:smoke`: VAR's smoke layout (depth 2, width 32, scales 1,2,3,4,5,7 of a 7x7 MNIST map) with a
width-32, depth-2 residual head; training needs a hybrid tokenizer run as tokenizer.checkpoint
(tokenizer.name='autoencoder' there, e.g. /tmp/t_hart from configs/tokenizers/hart_hybrid.py:smoke).
"""
from arjax.config import parse_arg, sibling_config

var = sibling_config(__file__, "var.py")


def get_config(arg=None):
  args = parse_arg(arg, depth="16", size="")
  depth = args.size or args.depth
  if str(depth) not in {str(d) for d in var.DEPTHS}:
    key = "size" if args.size else "depth"
    raise ValueError(f"hart {key}={depth!r}; expected one of {sorted(var.DEPTHS)}")
  c = var.var_config(int(depth), smoke=args.smoke)
  c.model.name = "hart"
  c.model.diff_width = 1024
  c.model.diff_depth = 6
  c.model.diffusion_batch_mul = 4
  c.model.num_sampling_steps = 8
  c.model.diff_weight = 1.0
  c.model.sampled_condition = True
  c.model.condition_top_k = 600         # the drawn q_K's top-k (HART's sampled_condition)
  c.model.condition_top_p = 0.96        # and top-p
  c.model.mask_last_scale = True        # MAR-style last scale in training (False: VAR's causal)
  c.model.mask_ratio_min = 0.5          # masked fraction ~ N(1, 0.25) truncated to [0.5, 1]
  c.model.mask_ratio_std = 0.25
  c.model.mask_keep_min = 32            # cells never masked (HART: seq_len - 32)
  c.model.num_maskgit_iters = 1         # last-scale MaskGIT iterations (HART's sample.py: 1)
  if args.smoke:
    c.model.diff_width = 32
    c.model.diff_depth = 2
    c.model.mask_keep_min = 8           # of the 7x7 last scale's 49 cells
  return c
