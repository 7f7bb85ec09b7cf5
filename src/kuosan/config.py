"""Typed experiment configuration: dataclasses, presets, files (TOML/JSON) and dotted overrides.

Only ``build.py`` turns a Config into objects. A Config round-trips through ``to_dict``/``from_dict``
(unknown keys are errors, so a typo never silently trains the wrong model).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuosan.presets import PRESETS, tomllib  # tomllib: the standard library's TOML parser (tomli on 3.10)


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, impossible value."""


@dataclass
class DataConfig:
    name: str = "digits"  # "digits", "toy2d:<moons|swissroll|8gaussians|checkerboard>", "folder:<path>", "shapes"
    size: int | None = None  # image folder: resize/crop to size x size
    channels: int = 1  # image folder: 1 (grayscale) or 3 (RGB)
    n: int = 50_000  # toy2d / shapes: number of points / images drawn once (with the run's seed)
    keep_classes: list = field(default_factory=list)  # labelled data: only these classes (e.g. [0, 1]); [] = all
    # image files (folder:PATH) in training: read once into memory, or streamed (data/streaming.py)
    loader: str = "auto"  # auto (stream when decoded > memory_mb, or flip / random crop), memory, stream
    memory_mb: float = 4096.0  # auto: the most the decoded data set may take in memory (MiB)
    workers: int = 2  # stream: decoding processes of the DataLoader (0: in the training process)
    crop: str = "center"  # with size: center, random (drawn at each reading: streams), none (squash)
    flip: bool = False  # a random horizontal flip at each reading (streams)
    skip_bad: bool = False  # leave out files that do not decode (their count is logged) instead of stopping
    cache: str = ""  # a folder keeping a latent run's encoded latents (keyed by images + autoencoder); "" = none


@dataclass
class ModelConfig:
    network: str = "unet"  # "unet" or "mlp"
    params: dict = field(default_factory=dict)  # keyword arguments of the network's constructor


@dataclass
class DiffusionConfig:
    kind: str = "vp"  # vp (DDPM on a beta schedule) or ncsn (score network, annealed DSM)
    sigma_min: float = 0.01  # ncsn: the smallest of the geometric noise levels
    sigma_max: float = 10.0  # ncsn: the largest (NCSNv2: about the largest distance between data points)
    num_scales: int = 25  # ncsn: number of levels L (the sampling grid's steps by default)
    schedule: str = "cosine"  # beta schedule: linear, cosine, sigmoid, scaled_linear
    T: int = 1000
    prediction: str = "eps"  # eps, x0, v
    weighting: str = "none"  # none, min_snr
    snr_gamma: float = 5.0
    loss: str = "simple"  # simple (L_simple), hybrid (L_simple + vlb_weight * L_vlb), vlb
    learn_sigma: bool = False  # network outputs 2x channels: prediction, then the variance (learned range)
    vlb_weight: float = 0.001  # lambda of the hybrid loss (Nichol & Dhariwal 2021, Eq. 16)
    timestep_sampler: str = "uniform"  # uniform, loss-second-moment (importance sampling, Eq. 18)
    dequantize: bool = False  # train on uniformly dequantized data (for PF-ODE likelihoods)


@dataclass
class TrainConfig:
    batch_size: int = 128  # the global batch (split over processes under torchrun)
    grad_accum: int = 1  # micro-batches per process and step
    grad_checkpointing: bool = False  # recompute block activations in the backward pass (memory for compute)
    init_from: str = ""  # start from pretrained weights: a kuosan run or diffusers:DIR (init_from.py)
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    steps: int | None = None  # total optimizer steps (the run stops at whichever comes first)
    time_budget: float | None = None  # seconds of training in this invocation
    device: str = "auto"  # auto (CUDA if there, cuda:LOCAL_RANK under torchrun, else CPU), cpu, cuda, cuda:N, mps
    precision: str = "auto"  # fp32, bf16, fp16 autocast; auto: bf16 on GPUs with it (else fp16), CPUs with bf16 units
    tf32: bool = True  # TF32 matmuls and convolutions on Ampere and newer GPUs
    channels_last: bool = True  # image data and networks in NHWC memory: faster convolutions and fused norms on CPU
    compile: bool = False  # torch.compile the network for training (compiles on the first steps)
    cpu_tweaks: bool = True  # CPU speed-ups, same numbers: AdamW on dense views, freed memory kept (train/cpu.py)
    checkpoint_every: float = 60.0  # seconds between checkpoints (and one at the end)
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    log_every: int = 25
    tensorboard: bool = False  # also write loss, lr, grad norm, steps/s and the sample grids as TensorBoard events
    seed: int = 0


@dataclass
class SampleConfig:
    sampler: str = "ddim"
    steps: int = 20
    grid: str = "trailing"
    clip: bool = True  # clamp x0_hat to the data range [-1, 1]
    device: str = "auto"  # as train.device
    precision: str = "fp32"  # the network's autocast while sampling: fp32, bf16, fp16 (GPU)


@dataclass
class LatentConfig:
    autoencoder: str = ""  # a trained autoencoder run, or diffusers:DIR (an AutoencoderKL); "" = pixel space
    scale_factor: float = 0.0  # latents are multiplied by it; 0 = 1/std of the training latents, or a
    # diffusers VAE's scaling_factor (saved)


@dataclass
class TextConfig:
    encoder: str = ""  # "minilm", "clip:PATH", "path:DIR"; "" = no text conditioning
    max_length: int = 24  # prompt tokens (longer prompts are truncated)
    cond_drop: float = 0.1  # share of training prompts replaced by the empty prompt (for CFG)
    inpaint_fraction: float = 0.0  # share of training examples given a random mask + masked image (0 = txt2img only)


@dataclass
class LabelConfig:
    classes: int = 0  # class-conditional on the data set's labels (their number); 0 = no labels
    cond_drop: float = 0.1  # share of training labels replaced by the null label (for CFG)
    guidance: float = 2.0  # classifier-free guidance scale of the samples (1 = the conditional model)
    names: list = field(default_factory=list)  # the class names, recorded from the data when training starts


@dataclass
class LoRAConfig:
    rank: int = 0  # LoRA on the attention projections of train.init_from's weights, rank r; 0 = no LoRA
    alpha: float = 0.0  # the adapter's scale is alpha / rank; 0 = rank (scale 1)
    dropout: float = 0.0  # dropout on the adapter's input


@dataclass
class AutoencoderConfig:
    recon: str = "l2"  # reconstruction term, summed over pixels: l2 or l1 (losses/autoencoder.py)
    kl_weight: float = 1e-6  # vae: weight of KL(q(z|x) || N(0, I)) in nats (LDM's 1e-6); ae: must be 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return _from_dict(cls, d, "")


# keys renamed since runs were first written: the old name still loads (as the new one)
RENAMED = {"train.retain_memory": "train.cpu_tweaks"}


def _from_dict(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {type(d).__name__}")
    for old, new in RENAMED.items():
        section, _, key = old.rpartition(".")
        if prefix == section + "." and key in d:
            d = {k: v for k, v in d.items() if k != key} | {new.rpartition(".")[2]: d[key]}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; known keys: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = _SECTIONS.get(name) if cls is Config else None
        kwargs[name] = _from_dict(sub, value, f"{prefix}{name}.") if sub else _coerce(value, ftype, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, ftype: str, key: str):
    """Check a leaf value against its annotated type (the annotations are strings here)."""
    if value is None:
        if "None" in ftype:
            return None
        raise ConfigError(f"{key} may not be empty")
    base = ftype.split("|")[0].strip()
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "tuple" and isinstance(value, (list, tuple)):
        return tuple(value)
    types = {"int": int, "str": str, "bool": bool, "dict": dict, "float": float}
    want = types.get(base)
    if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
        raise ConfigError(f"{key} must be {base}, got {value!r}")
    return copy.deepcopy(value)


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "latent": LatentConfig,
    "text": TextConfig,
    "label": LabelConfig,
    "autoencoder": AutoencoderConfig,
    "lora": LoRAConfig,
}


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config_file(path: str | Path) -> dict:
    """Read a TOML or JSON experiment file into a (possibly partial) config dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text()
        return tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config file {p}: {e}") from None


def parse_override(item: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is read as JSON when it parses
    (numbers, true/false, null, lists), else as a string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merge_overrides(base: dict, overrides: list[str]) -> dict:
    """A config dict with dotted ``section.key=value`` overrides applied on top, in order."""
    for item in overrides:
        base = _merge(base, parse_override(item))
    return base


def resolve_config(preset: str | None = None, file: str | None = None, overrides: list[str] = ()) -> Config:
    """Preset, then file, then dotted overrides, each on top of the last."""
    d = Config().to_dict()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        d = _merge(d, PRESETS[preset])
    if file is not None:
        d = _merge(d, load_config_file(file))
    return Config.from_dict(merge_overrides(d, overrides))
