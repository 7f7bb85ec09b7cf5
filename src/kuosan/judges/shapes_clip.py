"""A small contrastive image-text model of the captioned shapes (CLIP, Radford et al. 2021, in miniature).

``ShapesCLIP`` scores how well an image (B, 3, 32, 32) in [-1, 1] matches a caption; it implements the
``TextImageModel`` protocol of ``kuosan.metrics.clip_score`` (``encode_images``, ``encode_texts``), so
``clip_score(images, texts, load_shapes_clip())`` is a CLIP score for text-to-image models trained on
``kuosan.data.shapes``. Trained from scratch by ``scripts/train_shapes_clip.py`` with the symmetric
InfoNCE loss (``info_nce_loss``); weights, constructor config and word vocabulary ship together in
``weights/shapes_clip.safetensors`` (config and vocabulary as JSON in the safetensors metadata).

Image encoder f (c1, c2, c3 = channels, d = embed_dim):
    conv3x3 3->c1, GELU, maxpool 2, conv3x3 c1->c2, GELU, maxpool 2, conv3x3 c2->c3, GELU, maxpool 2,
    flatten (16 c3), linear -> hidden, GELU, linear -> d
Text encoder g (w = width): lower-cased words -> ids in the vocabulary (``build_vocabulary``: every word
    the caption templates can produce; others map to <unk>), word + learned position embeddings,
    ``layers`` pre-norm transformer encoder layers (``heads`` heads, padding masked), mean over the
    words, LayerNorm, linear -> d
Logit scale t (learned, initialised to log(1 / 0.07) as in CLIP): logits = exp(t) * cos(f, g).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from kuosan.data.shapes import ATTRIBUTES, CAPTION_TEMPLATES, POSITION_PHRASES, SIZE_WORDS
from kuosan.judges.shipped import load_shipped

WEIGHTS_PATH = Path(__file__).parent / "weights" / "shapes_clip.safetensors"
PAD, UNK = "<pad>", "<unk>"
MAX_WORDS = 20


def split_words(text: str) -> list[str]:
    """Lower-cased words of a text (punctuation dropped)."""
    return re.findall(r"[a-z]+", text.lower())


def build_vocabulary() -> list[str]:
    """[<pad>, <unk>, sorted words the caption templates can produce (all fillers, all synonyms)]."""
    words: set[str] = set()
    fillers = [
        *ATTRIBUTES["shape"],
        *ATTRIBUTES["colour"],
        *ATTRIBUTES["position"],
        *itertools.chain.from_iterable(SIZE_WORDS.values()),
    ]
    for phrase_groups in POSITION_PHRASES.values():
        for phrases in phrase_groups.values():
            fillers.extend(phrases)
    for text in [*CAPTION_TEMPLATES, *fillers]:
        words.update(split_words(re.sub(r"\{\w+\}", " ", text)))
    return [PAD, UNK, *sorted(words)]


class ShapesCLIP(nn.Module):
    """Image and text encoders into a shared ``embed_dim`` space, plus the learned logit scale."""

    def __init__(
        self,
        vocabulary: list[str],
        *,
        channels: tuple[int, int, int] = (16, 32, 64),
        hidden: int = 64,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        embed_dim: int = 64,
    ):
        super().__init__()
        if len(vocabulary) < 3 or vocabulary[:2] != [PAD, UNK]:
            raise ValueError("ShapesCLIP vocabulary must start with <pad>, <unk> and hold some words")
        c1, c2, c3 = channels
        self.vocabulary = list(vocabulary)
        self.word_index = {w: i for i, w in enumerate(self.vocabulary)}
        self.config = {
            "channels": [c1, c2, c3],
            "hidden": hidden,
            "width": width,
            "layers": layers,
            "heads": heads,
            "embed_dim": embed_dim,
        }
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * c3, hidden),
            nn.GELU(),
            nn.Linear(hidden, embed_dim),
        )
        self.word_embedding = nn.Embedding(len(vocabulary), width, padding_idx=0)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(MAX_WORDS, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.text_transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Word ids (N, L), L = longest text (at most MAX_WORDS words), padded with 0 (<pad>)."""
        ids = [[self.word_index.get(w, 1) for w in split_words(t)][:MAX_WORDS] or [1] for t in texts]
        out = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.long)
        for row, seq in zip(out, ids):
            row[: len(seq)] = torch.tensor(seq)
        return out

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """f(x): (N, 3, 32, 32) in [-1, 1] -> (N, embed_dim), not normalised."""
        if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"ShapesCLIP expects (N, 3, 32, 32) images, got {tuple(images.shape)}")
        return self.image_encoder(images.float().clamp(-1.0, 1.0))

    def encode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """g from word ids (N, L) -> (N, embed_dim): transformer, mean over non-padding words."""
        keep = ids != 0
        h = self.word_embedding(ids) + self.position_embedding[: ids.shape[1]]
        h = self.text_transformer(h, src_key_padding_mask=~keep)
        h = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        return self.text_projection(self.text_norm(h))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """g(t): N captions -> (N, embed_dim), not normalised."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("ShapesCLIP.encode_texts expects a non-empty list of strings")
        return self.encode_tokens(self.tokenize(list(texts)).to(self.logit_scale.device))


def save_shapes_clip(model: ShapesCLIP, path: str | Path, **extra_metadata: str) -> None:
    """Write the weights with config and vocabulary (JSON) in the safetensors metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.config), "vocabulary": json.dumps(model.vocabulary), **extra_metadata}
    save_file(state, str(path), metadata=metadata)


def load_shapes_clip(path: str | Path | None = None) -> ShapesCLIP:
    """The trained model in eval mode, from ``path`` (default: the shipped weights)."""
    path = Path(path) if path is not None else WEIGHTS_PATH

    def build(config: dict, metadata: dict) -> ShapesCLIP:
        if "vocabulary" not in metadata or not config:
            raise ValueError(f"{path} is not a ShapesCLIP file: its metadata lacks config and vocabulary")
        return ShapesCLIP(json.loads(metadata["vocabulary"]), **config)

    return load_shipped(path, build, what="shapes CLIP", script="scripts/train_shapes_clip.py")


def caption_consistency(attributes: dict[str, torch.Tensor], named: dict[str, torch.Tensor]) -> torch.Tensor:
    """C (N, N) bool: C_ij = caption j describes image i truthfully (every attribute caption j names
    equals image i's), so retrieving any consistent caption or image is a correct answer."""
    n = len(next(iter(attributes.values())))
    out = torch.ones(n, n, dtype=torch.bool)
    for key in ATTRIBUTES:
        out &= ~named[key][None, :] | (attributes[key][:, None] == attributes[key][None, :])
    return out


@torch.no_grad()
def retrieval_report(
    model: ShapesCLIP,
    images: torch.Tensor,
    captions: list[str],
    attributes: dict[str, torch.Tensor],
    named: dict[str, torch.Tensor],
) -> dict[str, float]:
    """Retrieval quality of a contrastive shapes model on N captioned images (one pool of N):

    - ``i2t`` / ``t2i``: share of images (captions) whose top-scored caption (image) is the paired one
      or describes it just as truly (``caption_consistency``; captions that omit size or position fit
      several images);
    - ``i2t_exact`` / ``t2i_exact``: the paired item itself ranks first (strict, capped by duplicates);
    - ``zero_shot``: the best of all canonical four-attribute captions (``make_caption``) names every
      attribute of the image right, per attribute (``zero_shot_<key>``) and all at once;
    - ``score_matched`` / ``score_shuffled``: mean cosine of paired and of randomly re-paired captions
      (a fixed derangement: caption i + N/2 mod N).
    """
    from kuosan.data.shapes import make_caption
    from kuosan.metrics.clip_score import similarity_matrix

    model.eval()
    n = len(captions)
    u, w = model.encode_images(images), model.encode_texts(captions)
    sim = similarity_matrix(u, w)
    consistent = caption_consistency(attributes, named)
    rows = torch.arange(n)
    report = {
        "i2t": float(consistent[rows, sim.argmax(1)].float().mean()),
        "t2i": float(consistent[sim.argmax(0), rows].float().mean()),
        "i2t_exact": float((sim.argmax(1) == rows).float().mean()),
        "t2i_exact": float((sim.argmax(0) == rows).float().mean()),
        "score_matched": float(sim.diagonal().mean()),
        "score_shuffled": float(sim[rows, (rows + n // 2) % n].mean()),
    }
    combos = list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values())))
    texts = [
        make_caption(*(ATTRIBUTES[k][i] for k, i in zip(("shape", "colour", "size", "position"), c))) for c in combos
    ]
    keys = list(ATTRIBUTES)
    best = torch.tensor(combos)[similarity_matrix(u, model.encode_texts(texts)).argmax(1)]  # (N, 4)
    all_right = torch.ones(n, dtype=torch.bool)
    for j, key in enumerate(keys):
        right = best[:, j] == attributes[key]
        report[f"zero_shot_{key}"] = float(right.float().mean())
        all_right &= right
    report["zero_shot"] = float(all_right.float().mean())
    return {k: round(v, 4) for k, v in report.items()}


__all__ = [
    "ShapesCLIP",
    "WEIGHTS_PATH",
    "build_vocabulary",
    "caption_consistency",
    "retrieval_report",
    "load_shapes_clip",
    "save_shapes_clip",
    "split_words",
]
