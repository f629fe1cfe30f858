"""HMAR class-conditional Markovian next-scale prediction with masked in-scale refinement at
ImageNet 256 (Kumbong et al. 2025, "HMAR: Efficient Hierarchical Masked AutoRegressive Image
Generation"), depths 16 / 20 / 24 / 30.

  python -m arjax.inspect --config configs/imagenet256/hmar.py:depth=16 --json
  python -m arjax.train --config configs/imagenet256/hmar.py:depth=16 --workdir W \
      --config.tokenizer.checkpoint=VAE_RUN \
      --config.data.source=array_record:/data/imagenet_var/{split}.array_record

VAR's tokens and blocks (derived from `var.py`) under the block-diagonal Markovian mask
(order.markovian=True, order.markov_window=0: HMAR's released attention, scale k attends to its
own slots; its input f_hat carries scale k-1), plus the refinement branch: the last 8 blocks
duplicated with their own head and a mask embedding (model 'hmar'). Sampling: HMAR's default
mask schedule at 256 ([1] [1,3] [1,1,2,5] [16] ... [256]: scales 2 and 3 refined in 1 and 3
masked steps) and its evaluation settings cfg / top-k / top-p: d16 1.7 / 1000 / 0.99, d20
1.9 / 950, d24 2.1 / 900, d30 1.6 / 650 (eval.cfg_scale = 1 + cfg on VAR's linear ramp).
HMAR trains the base for 200 epochs (d16) and fine-tunes the branch (100 epochs) with the base
frozen; here both losses train together (see arjax/models/hmar.py).
`:smoke`: depth 2 (one refinement block), width 32, scales 1,2,3,4,5,7 of a 7x7 MNIST token map,
schedule [1] [1,3] [4,5] [16] [25] [49].
"""
from arjax.config import parse_arg, sibling_config

var = sibling_config(__file__, "var.py")

EVAL = {16: (1.7, 1000), 20: (1.9, 950), 24: (2.1, 900), 30: (1.6, 650)}  # cfg, top_k
SCHEDULE = "1;1,3;1,1,2,5;16;25;36;64;100;169;256"


def get_config(arg=None):
  args = parse_arg(arg, depth="16", size="")
  depth = args.size or args.depth
  if str(depth) not in {str(d) for d in EVAL}:
    key = "size" if args.size else "depth"
    raise ValueError(f"hmar {key}={depth!r}; expected one of {sorted(EVAL)}")
  depth = int(depth)
  c = var.var_config(depth, smoke=args.smoke)
  c.model.name = "hmar"
  c.order.markovian = True
  c.order.markov_window = 0
  c.model.refine_blocks = 8
  c.model.refine_weight = 1.0
  c.model.mask_schedule = SCHEDULE
  cfg, top_k = EVAL[depth]
  c.eval.cfg_scale = 1.0 + cfg
  c.eval.top_k, c.eval.top_p = top_k, 0.99
  if args.smoke:
    c.model.refine_blocks = 1
    c.model.mask_schedule = "1;1,3;4,5;16;25;49"
    c.eval.top_k, c.eval.top_p = 0, 1.0
  return c
