"""CLIP-style text-image scores and the symmetric InfoNCE loss (Radford et al. 2021).

Notation: an image encoder f and a text encoder g map to a shared space; with unit vectors
u_i = f(x_i) / |f(x_i)| and w_j = g(t_j) / |g(t_j)|, the score of image x_i and text t_j is the cosine
s_ij = u_i . w_j in [-1, 1]. torchmetrics' ``CLIPScore`` reports ``100 * max(s_ii, 0)`` instead
(Hessel et al. 2021 use w = 2.5 in place of 100); ``torchmetrics_convention`` converts.

A text-image model here is any object with

    encode_images(images: (N, 3, H, W) in [-1, 1]) -> (N, D)    encode_texts(texts: list[str]) -> (N, D)

(embeddings need not be normalised). Two implement it: ``HFCLIPScorer`` (a transformers ``CLIPModel``
from a local directory, ``load_clip``; images are preprocessed in torch the way its
``CLIPImageProcessor`` does: resize the short side, centre-crop, normalise with its mean/std) and
``kuosan.judges.shapes_clip.ShapesCLIP`` (a small model trained on the captioned shapes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F


class TextImageModel(Protocol):
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------------- formulas


def cosine_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """s_ii = u_i . w_i with u = f / |f|, w = g / |g| (Radford et al. 2021, Fig. 3): (N, D), (N, D) -> (N,)."""
    return (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(-1)


def similarity_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """S_ij = u_i . w_j for all pairs: (N, D), (M, D) -> (N, M)."""
    return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def torchmetrics_convention(scores: torch.Tensor) -> torch.Tensor:
    """torchmetrics' CLIPScore from cosines: 100 * max(s, 0)."""
    return 100.0 * scores.clamp_min(0.0)


def info_nce_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of a batch of N matched pairs (Radford et al. 2021, Fig. 3), per pair (N,).

    With logits L_ij = exp(t) * u_i . w_j (``logit_scale`` = t, the log inverse temperature):

        loss_i = 1/2 [ -log softmax_j(L_i.)_i  -  log softmax_j(L_.i)_i ]

    the mean of the image->text and text->image cross-entropies with the matched pair as the class;
    ``loss.mean()`` is CLIP's objective.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(
            f"info_nce_loss needs two (N, D) embeddings, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype).exp()
    logits = scale * similarity_matrix(image_emb, text_emb)
    target = torch.arange(len(logits), device=logits.device)
    i2t = F.cross_entropy(logits, target, reduction="none")
    t2i = F.cross_entropy(logits.T, target, reduction="none")
    return 0.5 * (i2t + t2i)


@torch.no_grad()
def clip_score(
    images: torch.Tensor,
    texts: list[str],
    model: TextImageModel,
    *,
    torchmetrics_scale: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-pair score (N,) of images (N, 3, H, W) in [-1, 1] and their texts: the cosine s_ii
    (``cosine_scores``), or 100 * max(s_ii, 0) with ``torchmetrics_scale=True``."""
    if len(images) != len(texts):
        raise ValueError(f"clip_score needs one text per image, got {len(images)} images and {len(texts)} texts")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_score expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
    scores = []
    for start in range(0, len(texts), batch_size):
        chunk = slice(start, start + batch_size)
        scores.append(cosine_scores(model.encode_images(images[chunk]), model.encode_texts(texts[chunk])))
    s = torch.cat(scores) if scores else torch.zeros(0)
    return torchmetrics_convention(s) if torchmetrics_scale else s


# ------------------------------------------------------------------------------- transformers' CLIP


class HFCLIPScorer:
    """A transformers ``CLIPModel`` with its tokenizer, and the image preprocessing of its processor
    done in torch: x in [-1, 1] -> (x + 1) / 2, bicubic resize (antialiased) of the short side to
    ``resize``, centre crop to ``crop`` (h, w), (x - mean) / std."""

    def __init__(self, model, tokenizer, *, image_mean, image_std, resize: int, crop: tuple[int, int]):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.resize, self.crop = int(resize), (int(crop[0]), int(crop[1]))
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> the model's pixel_values (N, 3, crop_h, crop_w)."""
        x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self.preprocess(images))
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_clip(path: str | Path) -> HFCLIPScorer:
    """A CLIP model saved by transformers in the local directory ``path`` (``config.json``, weights,
    tokenizer files, optionally ``preprocessor_config.json``; without it OpenAI CLIP's mean/std and the
    vision config's image size are used). Nothing is downloaded."""
    try:
        from transformers import AutoTokenizer, CLIPModel
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    except ImportError as err:
        raise ImportError("load_clip needs transformers: pip install 'kuosan[text]'") from err

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no CLIP model at {path}: expected a transformers model directory with config.json")
    model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    image_size = int(model.config.vision_config.image_size)
    settings = {}
    if (path / "preprocessor_config.json").is_file():
        settings = json.loads((path / "preprocessor_config.json").read_text())
    size = settings.get("size", {})
    resize = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
    crop = settings.get("crop_size", {"height": image_size, "width": image_size})
    if not isinstance(crop, dict):
        crop = {"height": crop, "width": crop}
    if not settings.get("do_center_crop", True):
        crop = {"height": resize, "width": resize}
    return HFCLIPScorer(
        model,
        tokenizer,
        image_mean=settings.get("image_mean", OPENAI_CLIP_MEAN),
        image_std=settings.get("image_std", OPENAI_CLIP_STD),
        resize=resize,
        crop=(crop["height"], crop["width"]),
    )


__all__ = [
    "HFCLIPScorer",
    "TextImageModel",
    "clip_score",
    "cosine_scores",
    "info_nce_loss",
    "load_clip",
    "similarity_matrix",
    "torchmetrics_convention",
]
