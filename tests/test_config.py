from pathlib import Path

import pytest

from kuosan.build import validate
from kuosan.config import Config, ConfigError, parse_override, resolve_config
from kuosan.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_valid_and_roundtrip():
    for name in PRESETS:
        cfg = validate(resolve_config(name))
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_shipped_config_file_is_the_digits_preset():
    assert resolve_config(None, str(ROOT / "configs" / "digits.toml")) == resolve_config("digits")


def test_overrides_types_and_errors():
    assert parse_override("train.lr=1e-3") == {"train": {"lr": 0.001}}
    assert parse_override("data.name=toy2d:moons") == {"data": {"name": "toy2d:moons"}}
    cfg = resolve_config("digits", None, ["model.params.base_channels=32", "train.steps=5"])
    assert cfg.model.params["base_channels"] == 32 and cfg.model.params["channel_mult"] == [1, 2]
    assert cfg.train.steps == 5 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        resolve_config("digits", None, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match="unknown config key 'sample.stepz'"):
        resolve_config("digits", None, ["sample.stepz=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="sample.sampler='nope'"):
        validate(resolve_config("digits", None, ["sample.sampler=nope"]))
    with pytest.raises(ConfigError, match="more than the 1000"):
        validate(resolve_config("digits", None, ["sample.steps=1001"]))
