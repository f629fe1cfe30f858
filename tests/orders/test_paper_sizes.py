"""Paper-size configs of the order-driven generators: every size of every method has the
parameter count of its paper (from jax.eval_shape, nothing allocated), within 1 % or within the
rounding of the figure as written ('1.4B' allows 1.35B-1.45B), and every config accepts `smoke`.

Each config is built abstractly once (module-level cache)."""
import functools
import re

import jax
import pytest

from arjax.config import load_config
from arjax.models import build_model
from arjax.core.functional import FunctionalModel

PAPER = {  # method -> size -> the figure as the paper writes it.
    "rar": {"B": "261M", "L": "461M", "XL": "955M", "XXL": "1.5B"},
    "randar": {"L": "343M", "XL": "775M", "XXL": "1.4B"},
    "arpg": {"L": "320M", "XL": "719M", "XXL": "1.3B"},
    "maskgil": {"B": "111M", "L": "343M", "XL": "775M", "XXL": "1.4B"},
    "nar": {"B": "130M", "M": "290M", "L": "372M", "XL": "816M", "XXL": "1.46B"},
    "lpd": {"L": "337M", "XL": "752M", "XXL": "1.4B"},
    "par": {"L": "343M", "XL": "775M", "XXL": "1.4B"},
    # VAR: size = depth; the official code's d24 has 1.033B (the paper writes 1.0B).
    "var": {"16": "310M", "20": "600M", "24": "1.0B", "30": "2.0B"},
}
# NAR-M: the official code's GPT-M (18 layers, 16 heads, width 1024) plus NAR's extra block and
# second head has 295.5M parameters; the paper's table says 290M (-1.9 %), and no whole number of
# layers at that width is within 1 % (17: 282.6M, 18: 295.5M). Kept at the code's architecture.
KNOWN_MISMATCH = {("nar", "M"): 295_454_720}


def tolerance(figure: str) -> float:
  """Allowed |ours - paper|: 1 %, or half a unit of the figure's last digit if larger."""
  m = re.fullmatch(r"(\d+)(?:\.(\d+))?([MB])", figure)
  unit = 1e6 if m.group(3) == "M" else 1e9
  value = float(m.group(1) + "." + (m.group(2) or "0")) * unit
  half_digit = 0.5 * unit * 10 ** -len(m.group(2) or "")
  return value, max(0.01 * value, half_digit)


@functools.lru_cache(maxsize=None)
def param_count(spec: str) -> int:
  config = load_config(spec)
  # FunctionalModel.abstract skips jax's unused tracer messages: seconds even at 1.5B.
  fm = FunctionalModel.abstract(lambda: build_model(config, seed=0))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(fm.abstract_params))
  return fm.param_count()


CASES = [(m, s) for m, sizes in PAPER.items() for s in sizes]


@pytest.mark.parametrize("method,size", CASES)
def test_paper_size_parameter_count(method, size):
  ours = param_count(f"configs/imagenet256/{method}.py:size={size}")
  paper, tol = tolerance(PAPER[method][size])
  if (method, size) in KNOWN_MISMATCH:
    assert ours == KNOWN_MISMATCH[(method, size)]
    assert abs(ours - paper) > tol  # still the paper's discrepancy, not ours.
    return
  assert abs(ours - paper) <= tol, (f"{method}-{size}: {ours / 1e6:.1f}M vs paper "
                                    f"{PAPER[method][size]} ({100 * (ours / paper - 1):+.2f} %)")


def test_tolerance_follows_the_written_figure():
  assert tolerance("1.4B") == (1.4e9, 0.05e9)
  assert tolerance("1.46B") == (1.46e9, 0.01 * 1.46e9)
  assert tolerance("261M") == (261e6, 2.61e6)


@pytest.mark.parametrize("method", sorted(PAPER))
def test_every_config_has_a_smoke_mode_and_rejects_unknown_sizes(method):
  assert param_count(f"configs/imagenet256/{method}.py:smoke") < 1_000_000
  config = load_config(f"configs/imagenet256/{method}.py:smoke")
  assert config.train.num_steps <= 10 and config.data.source == "mnist"
  with pytest.raises(ValueError, match=f"{method} size='S'"):
    load_config(f"configs/imagenet256/{method}.py:size=S")
