"""diffusers checkpoints in kuosan: a model folder becomes a Denoiser, a schedule and a sampling grid.

A user's folder is what diffusers' ``save_pretrained`` writes:

- an unconditional DDPM (``google/ddpm-cifar10-32`` and its kin): ``unet/`` (or the folder itself)
  with ``config.json`` + ``diffusion_pytorch_model.safetensors``, and ``scheduler/scheduler_config.json``;
- Stable Diffusion 1.x / 2.x: ``unet/`` (a ``UNet2DConditionModel``, 4 or 9 input channels),
  ``vae/``, ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/``, ``scheduler/``.

The networks are loaded with diffusers itself (the optional extra ``kuosan[diffusers]``), never
re-implemented, and wrapped so that they take kuosan's conditioning keywords; the VP adapter
(:class:`~kuosan.diffusion.parameterization.VPDenoiser`) turns them into Denoisers. The noise
levels are the scheduler's own ``alphas_cumprod`` (so ``scaled_linear``, ``squaredcos_cap_v2``,
``trained_betas`` and ``rescale_betas_zero_snr`` mean exactly what they mean to diffusers), and
``prediction_type`` epsilon / v_prediction / sample becomes eps / v / x0.

Safety: only safetensors are read (``use_safetensors=True``), nothing is downloaded
(``local_files_only=True``); a folder holding only pickled weights (.bin, .ckpt, .pt) is refused
before anything is opened.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kuosan.diffusion.parameterization import VPDenoiser
from kuosan.diffusion.schedules import DiscreteSchedule, append_zero

logger = logging.getLogger(__name__)

PREFIX = "diffusers:"
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SCHEDULER_SPACINGS = ("leading", "trailing", "linspace")
PICKLES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
LEARNED_VARIANCES = ("learned", "learned_range")  # DDPMScheduler variance types whose U-Net predicts it
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusersError(ValueError):
    """A diffusers folder kuosan cannot use (one line: what is missing or wrong, and where)."""


def is_diffusers_spec(spec) -> bool:
    """Whether a model argument names a diffusers folder (``diffusers:DIR``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def folder_of(spec: str | Path) -> Path:
    """The directory of ``diffusers:DIR`` (or of a plain path), checked to exist."""
    text = str(spec)
    path = Path(text[len(PREFIX) :] if text.startswith(PREFIX) else text).expanduser()
    if not path.is_dir():
        raise DiffusersError(f"diffusers model folder not found: {path}")
    return path


def require_diffusers():
    """The diffusers module, or a one-line error saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise DiffusersError(
            "diffusers checkpoints need the package diffusers (pip install 'kuosan[diffusers]')"
        ) from None
    return diffusers


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffusersError(f"cannot read {path}: {e}") from None
    if not isinstance(value, dict):
        raise DiffusersError(f"{path} is not a JSON object")
    return value


def require_safetensors(folder: Path) -> None:
    """DiffusersError when a model folder has weights only as pickles (nothing is unpickled) or none."""
    if not (folder / "config.json").is_file():
        raise DiffusersError(f"{folder} is not a diffusers model folder (no config.json)")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLES)
    if pickles:
        raise DiffusersError(
            f"{folder} holds its weights only as pickles ({pickles[0]}); kuosan reads safetensors only (convert "
            "them with diffusers' save_pretrained(..., safe_serialization=True) where you trust the file)"
        )
    raise DiffusersError(f"{folder} holds no weights (no .safetensors file)")


def _read_json_or_none(path: Path, key: str):
    """``key`` of the JSON object in ``path``; None when there is no such file, object or key."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def subfolder(folder: Path, name: str, *, required: bool = True) -> Path | None:
    """``folder/name``, checked; for ``unet``, ``scheduler`` and ``vae`` a folder that is itself the
    part is accepted (a bare UNet2DModel folder with its scheduler_config.json beside it, a bare
    AutoencoderKL folder)."""
    path = folder / name
    if path.is_dir():
        return path
    if name == "unet" and (folder / "config.json").is_file():
        return folder
    if name == "scheduler" and (folder / "scheduler_config.json").is_file():
        return folder
    if name == "vae" and _read_json_or_none(folder / "config.json", "_class_name") == "AutoencoderKL":
        return folder
    if required:
        raise DiffusersError(f"{folder} has no {name}/ sub-folder")
    return None


# --- the noise schedule --------------------------------------------------------------------------


def read_scheduler_config(folder: Path) -> dict:
    """The scheduler config of a model folder (``scheduler/scheduler_config.json``)."""
    path = subfolder(folder, "scheduler") / "scheduler_config.json"
    if not path.is_file():
        raise DiffusersError(f"no scheduler config: {path} is missing")
    return _read_json(path)


def schedule_from_config(config: dict) -> DiscreteSchedule:
    """The discrete VP schedule of a diffusers scheduler config: diffusers' own ``alphas_cumprod``
    (float32, as the model was trained with it; ``rescale_betas_zero_snr`` included: its final abar
    is 0, an infinite noise level in VE scaling, and becomes 2^-24 as in diffusers' Euler, DPM-Solver
    and UniPC schedulers, sigma_max = 4096), as a float64 beta table
    beta_t = 1 - abar_t / abar_{t-1} whose cumulative product gives those abar back."""
    diffusers = require_diffusers()
    known = {
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "num_train_timesteps",
        "rescale_betas_zero_snr",
    }
    kwargs = {k: v for k, v in config.items() if k in known}
    try:
        scheduler = diffusers.DDPMScheduler(**kwargs)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise DiffusersError(f"scheduler config: {str(e).splitlines()[0]}") from None
    abar = scheduler.alphas_cumprod.to(torch.float64)
    if config.get("rescale_betas_zero_snr"):
        abar[-1] = 2.0**-24  # as EulerDiscreteScheduler / UniPCMultistepScheduler do
    if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
        raise DiffusersError("scheduler config: its alphas_cumprod are not a decreasing sequence in (0, 1)")
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    return DiscreteSchedule(betas)


def prediction_from_config(config: dict) -> str:
    """kuosan's name of the scheduler config's ``prediction_type``."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise DiffusersError(f"scheduler config: prediction_type {kind!r} is not one of {', '.join(PREDICTIONS)}")
    return PREDICTIONS[kind]


def scheduler_timesteps(config: dict, steps: int) -> list[int]:
    """The timesteps diffusers' DDIM/DDPM schedulers visit for ``steps`` inference steps
    (``timestep_spacing`` leading / trailing / linspace and ``steps_offset``, as their set_timesteps)."""
    T = int(config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= T:
        raise DiffusersError(f"steps must be between 1 and num_train_timesteps={T}, got {steps}")
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "leading":
        ts = [i * (T // steps) + int(config.get("steps_offset", 0)) for i in range(steps)][::-1]
    elif spacing == "trailing":
        ratio = T / steps
        ts = [round(T - i * ratio) - 1 for i in range(steps)]
    elif spacing == "linspace":
        ts = [round(v) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()][::-1]
    else:
        raise DiffusersError(
            f"scheduler config: timestep_spacing {spacing!r} is not one of leading, trailing, linspace"
        )
    return ts


@dataclass(frozen=True)
class SchedulerGrid:
    """A sampler grid that reproduces a diffusers DDIM/DDPM scheduler: ``sigmas`` (ending in 0, the
    Denoiser contract) and ``final_sigma``, the level the scheduler's last step lands on: 0, or with
    DDIM's ``set_alpha_to_one=False`` (Stable Diffusion's scheduler) the level of t = 0, where diffusers
    returns a sample that still carries that little noise. A pipeline holds the sample there
    (:class:`HoldAtDenoiser`) and returns it in VP scaling, as diffusers does."""

    sigmas: torch.Tensor
    final_sigma: float


def scheduler_grid(schedule: DiscreteSchedule, config: dict, steps: int, *, final: str = "ddim") -> SchedulerGrid:
    """The grid of diffusers' scheduler for ``steps`` steps on ``schedule``: its timesteps' noise
    levels, then its final level (``final="ddim"``: DDIMScheduler's, which reads ``set_alpha_to_one``;
    ``"ddpm"``: DDPMScheduler's, always the clean data). DDIM steps from t to t - T // steps, which is
    the next timestep for leading spacing and whenever steps divides T; otherwise (trailing or
    linspace at other step counts) diffusers' own DDIM is not a consistent grid and kuosan's grid
    takes the visited timesteps."""
    ts = scheduler_timesteps(config, steps)
    if any(not 0 <= t < schedule.T for t in ts):
        raise DiffusersError(f"steps_offset {config.get('steps_offset')} puts a timestep outside 0..{schedule.T - 1}")
    levels = schedule.sigmas[torch.tensor(ts)]
    final_sigma = 0.0
    if final == "ddim" and not config.get("set_alpha_to_one", True) and ts[-1] > 0:
        final_sigma = float(schedule.sigmas[0])
        levels = torch.cat([levels, levels.new_tensor([final_sigma])])
    return SchedulerGrid(append_zero(levels), final_sigma)


def sampling_grid(
    schedule: DiscreteSchedule, scheduler: dict | None, steps: int, grid: str, sampler: str
) -> SchedulerGrid:
    """The grid a request samples on: ``grid="scheduler"``, the diffusers scheduler's own timesteps
    (DDIM's final level; DDPM's, the clean data, for the ddpm sampler), or any kuosan grid (final
    level 0). ValueError for "scheduler" without a scheduler config."""
    if grid != "scheduler":
        from kuosan.diffusion.schedules import make_sigmas

        return SchedulerGrid(make_sigmas(schedule, steps, grid), 0.0)
    if scheduler is None:
        raise ValueError("grid 'scheduler' is a diffusers model's own timesteps; this model has no scheduler")
    return scheduler_grid(schedule, scheduler, steps, final="ddpm" if sampler == "ddpm" else "ddim")


class HoldAtDenoiser(nn.Module):
    """D(x, sigma) = x at noise levels at or below ``sigma_hold``, the wrapped denoiser above: an ODE
    step (Euler/DDIM) from sigma_hold to 0 then leaves x where it is, so a grid ending
    [..., sigma_hold, 0] returns the sample at sigma_hold (diffusers' final level) without a network
    evaluation there."""

    def __init__(self, denoiser, sigma_hold: float):
        super().__init__()
        self.denoiser, self.sigma_hold = denoiser, float(sigma_hold)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if bool((sigma <= self.sigma_hold * (1 + 1e-9)).all()):
            return x
        return self.denoiser(x, sigma, **cond)


def vp_output(x: torch.Tensor, final_sigma: float) -> torch.Tensor:
    """A sample at VE level ``final_sigma`` in VP scaling, x / sqrt(1 + sigma^2) (what a diffusers
    scheduler returns); x itself at 0."""
    return x / math.sqrt(1.0 + final_sigma**2) if final_sigma > 0 else x


# --- the networks --------------------------------------------------------------------------------


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` with kuosan's call: ``net(x_t, t,
    context=None, cond_image=None)`` -> its prediction (the ``.sample`` of its output), in float32.

    ``context`` is the text encoder's hidden states (diffusers' ``encoder_hidden_states``);
    ``cond_image`` (the 9-channel inpainting U-Net's mask and masked-image latents, kuosan's
    :func:`~kuosan.diffusion.guidance.inpaint_cond_image` order: mask first) is concatenated after
    x_t along channels, as diffusers' inpainting pipeline does. Inputs are cast to the network's dtype
    (float16/bfloat16 weights run as loaded)."""

    def __init__(self, unet: nn.Module, *, learned_variance: bool = False):
        super().__init__()
        self.unet = unet
        self.config = dict(unet.config)
        self.conditional = "cross_attention_dim" in self.config
        channels = int(self.config.get("in_channels", 3))
        out = int(self.config.get("out_channels", channels))
        if learned_variance:  # the prediction and the variance channels: the data have half of them
            out //= 2
        self.extra_channels = channels - out if self.conditional else 0  # 5 for SD's inpainting U-Net
        size = self.config.get("sample_size", 32)
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (out, *size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context=None, cond_image=None, **unused) -> torch.Tensor:
        if unused:
            raise TypeError(f"a diffusers U-Net takes no {sorted(unused)[0]}= conditioning")
        dtype = self.unet.dtype
        if cond_image is not None:
            x_t = torch.cat([x_t, cond_image.to(x_t.dtype)], dim=1)
        elif self.extra_channels:
            raise ValueError(f"this inpainting U-Net takes {self.extra_channels} more input channels (cond_image=)")
        kwargs = {}
        if self.conditional:
            if context is None:
                raise ValueError("this U-Net is text-conditional: it needs context= (the prompt's hidden states)")
            kwargs["encoder_hidden_states"] = context.to(dtype)
        return self.unet(x_t.to(dtype), t, **kwargs).sample.float()


def _load(cls, path: Path, dtype: torch.dtype | None):
    require_safetensors(path)
    try:
        return cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DiffusersError(f"cannot load {cls.__name__} from {path}: {str(e).strip().splitlines()[0]}") from None


def load_unet(folder: Path, *, dtype: torch.dtype | None = None, learned_variance: bool = False) -> DiffusersUNet:
    """The folder's U-Net (``unet/``, or the folder itself), UNet2DConditionModel or UNet2DModel by its
    config, in eval mode without gradients (``learned_variance``: its outputs are the prediction and
    the variance channels, the scheduler's ``variance_type`` learned / learned_range)."""
    diffusers = require_diffusers()
    path = subfolder(folder, "unet")
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    name = config.get("_class_name", "UNet2DModel")
    if name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise DiffusersError(f"{path}: a {name} is not a U-Net kuosan can run (UNet2DModel, UNet2DConditionModel)")
    unet = _load(getattr(diffusers, name), path, dtype)
    return DiffusersUNet(unet.eval().requires_grad_(False), learned_variance=learned_variance)


@dataclass
class DiffusersModel:
    """An unconditional or text-conditional diffusers model, the pieces kuosan samples with:
    ``network`` (a :class:`DiffusersUNet`), ``schedule``, ``prediction``, the ``scheduler`` config,
    and ``clip`` (the scheduler's ``clip_sample``: x0_hat clamped to [-1, 1])."""

    path: Path
    network: DiffusersUNet
    schedule: DiscreteSchedule
    prediction: str
    scheduler: dict

    @property
    def clip(self) -> bool:
        return bool(self.scheduler.get("clip_sample", False)) and not self.scheduler.get("thresholding", False)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.network.data_shape

    def denoiser(self, *, clip: bool | None = None):
        """The U-Net as a Denoiser D(x, sigma, **cond) (x0 clamped to [-1, 1] if ``clip``, default the
        scheduler's clip_sample)."""
        from kuosan.diffusion.guidance import ClampDenoiser

        learned = self.scheduler.get("variance_type") in LEARNED_VARIANCES
        den = VPDenoiser(self.network, self.schedule, self.prediction, learn_sigma=learned)
        return ClampDenoiser(den) if (self.clip if clip is None else clip) else den

    def grid(self, steps: int, *, final: str = "ddim") -> SchedulerGrid:
        """The scheduler's own grid for ``steps`` steps (:func:`scheduler_grid`)."""
        return scheduler_grid(self.schedule, self.scheduler, steps, final=final)


def load_model(spec: str | Path, *, dtype: torch.dtype | str | None = None) -> DiffusersModel:
    """A diffusers model folder (``diffusers:DIR`` or DIR) as a :class:`DiffusersModel`; its weights in
    ``dtype`` (torch dtype or "float32"/"float16"/"bfloat16"; default as saved, float32 for float32
    checkpoints). DiffusersError (one line) for a folder that is not a usable model."""
    folder = folder_of(spec)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DiffusersError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    config = read_scheduler_config(folder)
    network = load_unet(folder, dtype=dtype, learned_variance=config.get("variance_type") in LEARNED_VARIANCES)
    return DiffusersModel(
        path=folder,
        network=network,
        schedule=schedule_from_config(config),
        prediction=prediction_from_config(config),
        scheduler=config,
    )


# --- Stable Diffusion: the text encoder, the VAE, the folder ------------------------------------------


class PromptEncoder(nn.Module):
    """Stable Diffusion's text conditioning, as diffusers' ``encode_prompt`` computes it: prompts
    tokenised to the tokenizer's ``model_max_length`` (77 for CLIP) with padding and truncation,
    encoded by the frozen text encoder without an attention mask (unless its config sets
    ``use_attention_mask``), the last hidden state as the U-Net's ``context``. A prompt longer than
    the limit is truncated with a warning naming what was cut, as diffusers does."""

    def __init__(self, tokenizer, text_encoder: nn.Module):
        super().__init__()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval().requires_grad_(False)
        self.max_length = int(tokenizer.model_max_length)

    def train(self, mode: bool = True) -> PromptEncoder:
        return super().train(False)  # frozen

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        prompts = list(prompts)
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        full = self.tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > tokens.input_ids.shape[-1]:
            cut = self.tokenizer.batch_decode(full[:, self.max_length - 1 : -1])
            logger.warning("prompts were truncated to %d tokens; removed: %s", self.max_length, cut)
        where = next(self.text_encoder.parameters()).device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(where)
        hidden = self.text_encoder(tokens.input_ids.to(where), attention_mask=mask)[0]
        return {"context": hidden.float()}


def _component_class(folder: Path, name: str, default: str) -> str:
    """The class ``model_index.json`` names for a component (diffusers loads that one)."""
    index = folder / "model_index.json"
    entry = _read_json(index).get(name) if index.is_file() else None
    return entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else default


def load_prompt_encoder(folder: Path) -> PromptEncoder:
    """The folder's ``tokenizer/`` and ``text_encoder/`` (transformers, the classes model_index.json
    names) as a :class:`PromptEncoder`."""
    try:
        import transformers
    except ImportError:
        raise DiffusersError(
            "Stable Diffusion's text encoder needs transformers (pip install 'kuosan[diffusers]')"
        ) from None
    tok_dir, enc_dir = subfolder(folder, "tokenizer"), subfolder(folder, "text_encoder")
    require_safetensors(enc_dir)
    tok_cls = getattr(transformers, _component_class(folder, "tokenizer", "CLIPTokenizer"), transformers.AutoTokenizer)
    enc_cls = getattr(transformers, _component_class(folder, "text_encoder", "CLIPTextModel"), None)
    if enc_cls is None:
        raise DiffusersError(
            f"{folder}: text_encoder class {_component_class(folder, 'text_encoder', '')!r} is not in transformers"
        )
    try:
        tokenizer = tok_cls.from_pretrained(str(tok_dir), local_files_only=True)
        encoder = enc_cls.from_pretrained(str(enc_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiffusersError(f"cannot load the text encoder of {folder}: {str(e).strip().splitlines()[0]}") from None
    return PromptEncoder(tokenizer, encoder)


def load_vae(folder: Path):
    """The folder's ``vae/`` as kuosan's :class:`~kuosan.networks.autoencoder.AutoencoderKL` (diffusers'
    module names; its config's ``scaling_factor`` and ``shift_factor`` recorded), float32, eval mode."""
    from kuosan.networks.autoencoder_diffusers import load_diffusers_vae

    path = subfolder(folder, "vae")
    require_safetensors(path)
    try:
        vae = load_diffusers_vae(path)
    except ValueError as e:
        raise DiffusersError(str(e).splitlines()[0]) from None
    return vae.requires_grad_(False)


@dataclass
class StableDiffusion:
    """A Stable Diffusion folder's parts: ``model`` (U-Net, schedule, scheduler config), ``vae``,
    ``text_encoder`` (a :class:`PromptEncoder`), and the latent ``scale_factor`` / ``shift_factor``."""

    model: DiffusersModel
    vae: nn.Module
    text_encoder: PromptEncoder
    scale_factor: float
    shift_factor: float | None


def load_stable_diffusion(spec: str | Path, *, dtype: torch.dtype | str | None = None) -> StableDiffusion:
    """A Stable Diffusion folder (``diffusers:DIR`` or DIR) with unet/, vae/, text_encoder/,
    tokenizer/ and scheduler/; the U-Net's weights in ``dtype`` (default as saved)."""
    folder = folder_of(spec)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise DiffusersError(f"{folder} is not a Stable Diffusion folder: it has no {part}/ sub-folder")
    model = load_model(folder, dtype=dtype)
    if not model.network.conditional:
        raise DiffusersError(f"{folder}/unet is a {model.network.unet.__class__.__name__}: it takes no text")
    vae = load_vae(folder)
    encoder = load_prompt_encoder(folder)
    vae_config = _read_json(folder / "vae" / "config.json")
    latent = int(vae_config.get("latent_channels", 4))
    if model.data_shape[0] != latent:
        raise DiffusersError(f"{folder}: the U-Net makes {model.data_shape[0]}-channel latents, the VAE has {latent}")
    return StableDiffusion(
        model=model,
        vae=vae,
        text_encoder=encoder,
        scale_factor=float(vae_config.get("scaling_factor", 0.18215)),
        shift_factor=vae_config.get("shift_factor"),
    )


__all__ = [
    "DiffusersError",
    "DiffusersModel",
    "DiffusersUNet",
    "HoldAtDenoiser",
    "PromptEncoder",
    "StableDiffusion",
    "SchedulerGrid",
    "folder_of",
    "is_diffusers_spec",
    "load_model",
    "load_prompt_encoder",
    "load_stable_diffusion",
    "load_unet",
    "load_vae",
    "prediction_from_config",
    "read_scheduler_config",
    "require_safetensors",
    "sampling_grid",
    "schedule_from_config",
    "scheduler_grid",
    "scheduler_timesteps",
    "vp_output",
]
