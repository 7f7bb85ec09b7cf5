"""LoRA fine-tuning (lora.rank on train.init_from's weights): only the adapter trains and is saved,
the run resumes bitwise on its base loaded again, and sampling with the adapter equals sampling with
the adapter folded into the weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from kuosan.app import build_trainer
from kuosan.config import ConfigError, resolve_config
from kuosan.networks.lora import add_lora, attention_projections
from kuosan.runs import Run
from kuosan.samplers.loop import generate
from kuosan.train import checkpoint as ckpt
from train_helpers import TINY_DIGITS, checkpoint_tensors, trained_digits

pytest.importorskip("peft")

TINY = TINY_DIGITS


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "digits"
    return trained_digits(out, seed=5)


def lora_config(base, *extra):
    # lr high enough that four steps move B well away from its zero start
    return resolve_config("digits", None, TINY + [f"train.init_from={base}", "lora.rank=2", "train.lr=0.02", *extra])


def test_only_the_adapter_trains_is_saved_and_resumes_bitwise(base, tmp_path):
    build_trainer(lora_config(base), tmp_path / "a", progress=False).fit(steps=4)
    straight = checkpoint_tensors(tmp_path / "a")
    assert straight["ema"] and all(".lora_A." in k or ".lora_B." in k for k in straight["ema"])
    # one adapter (A and B) on each of the two projections of the four attention blocks (8x8 is level 0,
    # the attention at level 1: one down block, the middle, two up blocks)
    net = Run.open(tmp_path / "a", merge_lora=False).network
    assert len(straight["model"]) == 2 * len(attention_projections(net)) == 2 * 2 * 4
    adapter, whole = (ckpt.find_checkpoint(p) / "ema.safetensors" for p in (tmp_path / "a", base))
    assert adapter.stat().st_size < 0.05 * whole.stat().st_size
    # the base is untouched: every weight outside the adapter is the base run's EMA weight
    base_ema = ckpt.load_tensors(base, "ema")
    for key, value in net.state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(value, base_ema[key.replace(".base_layer.", ".")]), key
    # 2 + 2 steps resumed (the base loaded again) equal 4 straight, bitwise
    build_trainer(lora_config(base), tmp_path / "b", progress=False).fit(steps=2)
    resumed = build_trainer(lora_config(base), tmp_path / "b", progress=False)
    resumed.resume()
    resumed.fit(steps=4)
    again = checkpoint_tensors(tmp_path / "b")
    assert all(torch.equal(straight[n][k], again[n][k]) for n in straight for k in straight[n])


def test_sampling_with_the_adapter_equals_sampling_with_merged_weights(base, tmp_path):
    build_trainer(lora_config(base), tmp_path / "a", progress=False).fit(steps=4)

    def draw(run):
        return generate(run.denoiser(), run.schedule, (1, 8, 8), 8, steps=5, generator=torch.Generator().manual_seed(0))

    adapted = draw(Run.open(tmp_path / "a", merge_lora=False))
    merged_run = Run.open(tmp_path / "a")
    assert not any(".lora_" in k for k in merged_run.network.state_dict())  # plain layers again
    merged = draw(merged_run)
    original = draw(Run.open(base))
    torch.testing.assert_close(adapted, merged, atol=1e-4, rtol=0)
    # the adapter changed the model (its self-attention projections included: a LoRA the fused
    # channel_linear skipped would sample the base model unmerged, and fail the equality above)
    assert (adapted - original).abs().max() > 1e-2
    # a run started from the LoRA run (train.init_from) starts from the merged weights
    after = build_trainer(
        resolve_config("digits", None, TINY + [f"train.init_from={tmp_path / 'a'}"]), tmp_path / "c", progress=False
    )
    merged_weights = merged_run.network.state_dict()
    assert all(torch.equal(v, merged_weights[k]) for k, v in after.net.state_dict().items())


def test_lora_refusals(base, tmp_path):
    with pytest.raises(ConfigError, match="train.init_from"):
        build_trainer(resolve_config("digits", None, TINY + ["lora.rank=2"]), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="lora.rank must be"):
        build_trainer(lora_config(base, "lora.rank=-1"), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="no attention layers"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), rank=2, alpha=2)
    # a base lacking a layer of the network (a label embedding) would leave it random and frozen
    cfg = resolve_config("digits-class", None, TINY + [f"train.init_from={base}", "lora.rank=2"])
    with pytest.raises(ConfigError, match="lacks 1 weights"):
        build_trainer(cfg, tmp_path / "z", progress=False)
    # a LoRA run whose base is gone cannot be rebuilt: one line naming it
    kept = tmp_path / "kept"
    shutil.copytree(base, kept)
    build_trainer(lora_config(kept), tmp_path / "w", progress=False).fit(steps=1)
    shutil.rmtree(kept)
    with pytest.raises(ConfigError, match="no kuosan run there"):
        Run.open(tmp_path / "w")
