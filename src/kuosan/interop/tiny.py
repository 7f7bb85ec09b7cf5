"""Tiny random diffusers models written to local folders, for tests, benchmarks and for trying
kuosan's diffusers interop without a download: an unconditional DDPM (UNet2DModel + DDPMScheduler)
and a Stable Diffusion (UNet2DConditionModel, AutoencoderKL, a tiny CLIPTextModel and a word-level
tokenizer, DDIMScheduler with Stable Diffusion's settings). Random weights: they make noise, not
pictures; what they are for is that every array has the shape and the path of the real thing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

WORDS = ["a", "red", "green", "blue", "circle", "square", "on", "the", "left", "right"]


def word_tokenizer(directory, cls_sep: bool):
    """A tiny word-level tokenizer saved to ``directory`` (no download): <bos>/<eos> or [CLS]/[SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if cls_sep else ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{specials[2]} $A {specials[3]}", special_tokens=[(specials[2], 2), (specials[3], 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=specials[0], unk_token=specials[1], bos_token=specials[2], eos_token=specials[3]
    )
    tok.save_pretrained(directory)
    return tok, len(vocab)


def tiny_bert(folder: Path, *, seed: int = 0, layers: int = 1) -> Path:
    """A tiny random BERT (hidden size 24, ``layers`` layers) with :func:`word_tokenizer`'s vocabulary, saved to
    ``folder``: a text encoder for kuosan's own text runs (``text.encoder=path:FOLDER``)."""
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    _, n = word_tokenizer(folder, cls_sep=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(
            BertConfig(
                vocab_size=n,
                hidden_size=24,
                intermediate_size=48,
                num_hidden_layers=layers,
                num_attention_heads=2,
                max_position_embeddings=16,
            )
        )
    model.save_pretrained(folder)
    return folder


def tiny_ddpm(folder: Path, *, seed: int = 0, **scheduler) -> Path:
    """A 3x8x8 DDPM folder as DDPMPipeline.save_pretrained writes it (unet/, scheduler/)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**{"num_train_timesteps": 1000, **scheduler})).save_pretrained(
        folder
    )
    return Path(folder)


def tiny_stable_diffusion(folder: Path, *, seed: int = 0, inpaint: bool = False, **scheduler) -> Path:
    """A Stable Diffusion folder at 32x32 pixels (8x8x4 latents): SD 1.x's layout and scheduler config
    (scaled_linear betas, steps_offset 1, set_alpha_to_one False, clip_sample False), tiny widths;
    ``inpaint``: the 9-channel inpainting U-Net."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text = _tiny_sd_networks(inpaint)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, _ = word_tokenizer(scratch, cls_sep=False)
    tokenizer.model_max_length = 12
    settings = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    settings.update(scheduler)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**settings),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def _tiny_sd_networks(inpaint: bool):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(WORDS) + 4,  # the word tokenizer's words and its 4 specials
            hidden_size=24,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=12,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
    ).eval()
    return unet, vae, text
