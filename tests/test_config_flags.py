"""`--config FILE[:ARGS]` and `--config.FIELD=VALUE` through ml_collections.config_flags
(arjax.config.parse_config_flags): both spellings, typed values, parts completed before the
overrides, renamed parts, repeated parses in one process, and the rest of argv left in order."""
import pytest

from arjax.config import load_config, parse_config_flags
from arjax.train.__main__ import parse_args

QUICK = "configs/quickstart.py:smoke"


def test_both_spellings_typed_values_and_the_rest_of_argv():
  config, spec, rest = parse_config_flags(
      ["--workdir", "/w", "--config", QUICK, "--config.train.lr", "0.25",
       "--config.train.num_steps=7", "--noconfig.train.async_checkpointing", "pos",
       "--config.sharding_rules=[['batch', 'data']]", "--config.model.backbone.qk_norm"])
  assert spec == QUICK and rest == ["--workdir", "/w", "pos"]
  assert config.train.lr == 0.25 and isinstance(config.train.lr, float)
  assert config.train.num_steps == 7 and config.train.async_checkpointing is False
  assert config.sharding_rules == [["batch", "data"]] and config.model.backbone.qk_norm is True
  with pytest.raises(AttributeError):  # locked: no new field by accident.
    config.train.foo = 1
  # The quickstart file itself leaves these at the base defaults.
  base = load_config(QUICK)
  assert (base.train.lr, base.train.async_checkpointing, base.model.backbone.qk_norm) != (
      0.25, False, True)


def test_parts_are_completed_and_renamed_before_the_overrides():
  # A declared field the file never set, of a part chosen by an earlier override, and a field
  # whose default is None (the backbone's cond_dim), in one parse.
  config, _, _ = parse_config_flags(
      ["--config", QUICK, "--config.model.name=ordered_ar", "--config.order.name", "masked",
       "--config.order.num_steps=4", "--config.model.backbone.cond_dim=16"])
  assert config.order.name == "masked" and config.order.num_steps == 4
  assert config.order.mask_schedule == "cosine"  # masked's declared default, completed.
  assert config.model.backbone.cond_dim == 16
  # The last rename wins; the defaults of the part it replaced are gone.
  config, _, _ = parse_config_flags(["--config", QUICK, "--config.order.name=random",
                                     "--config.order.name=lpd"])
  assert "anneal_start" not in config.order and config.order.locality_orders == 64


def test_repeated_parses_do_not_collide_and_the_train_parser_returns_the_config():
  for lr in (0.1, 0.2, 0.3):  # a private FlagValues per parse: no 'flag defined twice'.
    args, config = parse_args(["--config", QUICK, "--workdir", "/w", f"--config.train.lr={lr}"])
    assert args.workdir == "/w" and args.config == QUICK and config.train.lr == lr
  assert parse_config_flags(["--workdir", "/w"]) == (None, None, ["--workdir", "/w"])
