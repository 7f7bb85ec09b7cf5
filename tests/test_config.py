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


def test_a_preset_file_is_an_experiment_file():
    """The shipped preset file, given as --config, is the preset; an NCSN preset replaces its twin's
    diffusion and sample sections whole and keeps the rest."""
    import kuosan.presets

    digits_file = Path(kuosan.presets.__file__).parent / "digits.toml"
    assert resolve_config(None, str(digits_file)) == resolve_config("digits")
    ncsn, ddpm = PRESETS["digits-ncsn"], PRESETS["digits"]
    assert ncsn["model"] == ddpm["model"] and ncsn["train"] == ddpm["train"]
    assert "schedule" not in ncsn["diffusion"] and ncsn["diffusion"]["kind"] == "ncsn"


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


def test_model_params_are_checked_against_the_network_signature():
    from kuosan.build import build_network

    with pytest.raises(ConfigError, match=r"model.params.widht is not a parameter of model.network=unet \(it takes: "):
        build_network(resolve_config("digits", None, ["model.params.widht=3"]), (1, 8, 8))
    with pytest.raises(ConfigError, match="model.params.hiden is not a parameter of model.network=mlp"):
        build_network(resolve_config("toy2d", None, ["model.params.hiden=3"]), (2,))
    with pytest.raises(ConfigError, match="model.params: num_heads=5 must be >= 1 and divide"):
        build_network(resolve_config("digits", None, ["model.params.num_heads=5"]), (1, 8, 8))


def test_a_renamed_key_still_loads():
    """Runs written before train.retain_memory became train.cpu_tweaks load with the value they had."""
    d = resolve_config("digits").to_dict()
    d["train"].pop("cpu_tweaks")
    d["train"]["retain_memory"] = False
    assert Config.from_dict(d).train.cpu_tweaks is False
