"""Text diffusion LMs on tiny Shakespeare (model 'diffusion_lm', arjax/models/diffusion_lm.py):
the shared config of configs/text/mdlm.py and configs/text/bd3lm.py, and the AR objective of
the same network (SDAR's conversion starts from it).

  python -m arjax.train --config configs/text/dlm.py:objective=ar --workdir workdirs/dlm_ar
  python -m arjax.train --config configs/text/mdlm.py --workdir workdirs/mdlm
  python -m arjax.train --config configs/text/bd3lm.py:block=4 --workdir workdirs/bd3lm_b4

Arguments: objective=ar|mdlm|bd3lm, block=B (bd3lm's block size, dividing L = 64), smoke.
The network, data, optimizer and budget are those of configs/text/char_ar.py (4 layers, width
128, 4 heads, SwiGLU rounded to 32, 64-character windows, batch 32, AdamW lr 3e-3), with 1D RoPE
and a [BOS] / [MASK] embedding instead of the class token. Evaluation: validation bits/char over
the whole validation split (`test_bits_per_char`: the exact NLL for 'ar', the NELBO upper bound
for 'mdlm' / 'bd3lm', marked `bound`) and text samples from the model's default sampler
(text_ar / mdlm / sdar, 16 steps) in WORKDIR/samples/text_STEP.txt. BD3-LM trains with the
clipped noise range t ~ U[0.3, 0.8] (its bound always uses U[0, 1]).
"""
import ml_collections

from arjax.config import parse_arg, sibling_config


def get_config(arg=None):
  args = parse_arg(arg, objective="mdlm", block=4)
  c = sibling_config(__file__, "char_ar.py").get_config("smoke" if args.smoke else None)
  seq_len = c.data.seq_len
  backbone = c.model.backbone
  backbone.position = "rope1d"
  c.model = ml_collections.ConfigDict()
  c.model.name = "diffusion_lm"
  c.model.objective = args.objective
  c.model.vocab_size = 65           # the character tokenizer's vocabulary.
  c.model.seq_len = seq_len
  c.model.block_size = int(args.block) if args.objective == "bd3lm" else seq_len
  if args.objective == "bd3lm":
    c.model.noise_min, c.model.noise_max = 0.3, 0.8
  c.model.backbone = backbone
  return c
