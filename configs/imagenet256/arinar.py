"""ARINAR-B: MAR's masked encoder-decoder with the feature-by-feature ARINAR head (Zhao et al.
2025), ImageNet 256 on cached KL-16 latents.

  python -m arjax.inspect --config configs/imagenet256/arinar.py --json      # 212,949,516
  python -m arjax.train --config configs/imagenet256/arinar.py --workdir W \
      --config.data.source=array_record:/data/imagenet_kl16/{split}.array_record
  python -m arjax.train --config configs/imagenet256/arinar.py:smoke --workdir /tmp/arinar_smoke

Everything of configs/imagenet256/mar.py:size=B (tokens, masked order with MAR's cosine reveal,
model 'mar', 64 buffer slots, dropout) except:
- the encoder and decoder have 14 ViT blocks each (the official Arinar repo's mar_base:
  enc_dec_depth -1 -> 14; MAR's own mar_base has 12), width 768, 12 heads;
- the head is 'arinar' (arjax/heads/arinar.py): one adaLN transformer block of width 768 with 16
  heads over the 16 features of each token, a 4-component 1-D GMM per feature;
- training as the official README's command: batch 64 x 4 GPUs = 256, lr 1e-4 (blr 1e-4 x
  256 / 256), 400 epochs, 100 warmup epochs then constant, AdamW (0.9, 0.95), weight decay 0.02,
  grad clip 3, EMA 0.9999, label drop 0.1;
- sampling: 64 steps, temperature 1.0, CFG 4.5 linear in the revealed fraction, applied by the
  head's sampling-importance-resampling with 1000 proposals (the README: cfg 4.5 at temperature
  1.0, or 3.9 at temperature 1.1). Paper FID 2.75.

Parameter count: 212,949,516 trainable parameters, the official code's count for
`mar_base(num_gaussians=4, inner_ar_width=768, inner_ar_depth=1, head_type='ar_gmm')` at 256 px
(counted by the official modules at commit ced03e5; tests/heads/test_arinar.py checks it): the
backbone's 200,526,336 (class table with the fake latent, z projection, 14 + 14 blocks, position
tables, [MASK]) plus the head's 12,423,180; the VAE excluded. The paper rounds it to 213M.

`smoke`: MAR's smoke (MNIST 7x7 continuous pixels, one channel, a tiny encoder-decoder) with a
width-16 ARINAR head, a few steps; runs on a fresh clone.
"""
from arjax.config import ConfigDict, parse_arg, sibling_config

mar = sibling_config(__file__, "mar.py")


def get_config(arg=None):
  args = parse_arg(arg)
  c = mar.get_config(f"size=B,head=gmm,smoke={args.smoke}")
  m = c.model
  if not args.smoke:
    m.backbone.num_layers = m.decoder_layers = 14
  m.head = ConfigDict(dict(name="arinar", num_components=4, width=768, depth=1, num_heads=16,
                           cfg_proposals=1000))
  if args.smoke:
    m.head.width, m.head.num_heads, m.head.cfg_proposals = 16, 2, 64
    return c
  t = c.train
  t.batch_size = 256
  t.lr = 1e-4                        # blr 1e-4 x 256 / 256.
  t.num_steps = 400 * 5005           # 400 epochs of 1.28M images at batch 256.
  t.warmup_steps = 100 * 5005
  c.eval.cfg_scale = 4.5
  c.eval.temperature = 1.0
  return c
