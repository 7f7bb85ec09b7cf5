"""The Inception-v3 of FID: TensorFlow's 2015-12-05 graph as pytorch-fid and torch-fidelity port it,
loaded from a weights file the user gives (kuosan downloads nothing), and its input pipeline.

Network. torchvision's Inception3 layout with the FID patches of pytorch-fid (``FIDInceptionA/C/E_1/
E_2``): average pools exclude the zero padding (TensorFlow's behaviour), and the last block (Mixed_7c)
max-pools in its pool branch. Parameter names are torchvision's (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``), so the weights files of pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``) and torch-fidelity (``weights-inception-2015-12-05-
6726825d.pth``) load as they are; a safetensors copy with the same names loads too. ``.pth`` files are
read with ``torch.load(weights_only=True)`` (tensors only, no arbitrary unpickling). Features: the 2048-d
average pool (FID, KID) and the 1008 logits.

Input pipeline (``RESIZE_POLICIES``), from images in [-1, 1] (grey images are repeated to RGB):

1. quantize to 8 bits, round((x + 1) * 127.5), as every reference tool sees images (PNG files or
   uint8 tensors); ``quantize=False`` skips it;
2. resize to 299 x 299 and normalize:

   - ``"tf1-bilinear"`` (default; torch-fidelity, and TensorFlow's original FID code):
     TensorFlow 1.x ``resize_bilinear`` with ``align_corners=False`` (source coordinate = i * in/out,
     no half-pixel offset), then (x - 128) / 128;
   - ``"clean-bicubic"`` (clean-fid, Parmar et al. 2022): PIL's bicubic (a = -0.5, antialiased when
     shrinking; torch's ``interpolate(mode="bicubic", antialias=True)`` computes the same filter),
     clipped to [0, 255], then (x - 128) / 128;
   - ``"torch-bilinear"`` (pytorch-fid): x / 255, torch bilinear with half-pixel centres
     (``align_corners=False``), then 2x - 1.

The choice changes FID by several points on small images (Parmar et al. 2022): report it with the number.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
RESIZE_POLICIES = ("tf1-bilinear", "clean-bicubic", "torch-bilinear")


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    """3x3 stride-1 average pool that, like TensorFlow's, does not count the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """pytorch-fid's FIDInceptionE_1 (``pool="avg"``, Mixed_7b) and FIDInceptionE_2 (``pool="max"``,
    Mixed_7c: the TensorFlow graph max-pools there)."""

    def __init__(self, c_in: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 for FID on normalized 299 x 299 RGB input (use :func:`preprocess` first):
    ``features(x)`` -> (B, 2048) pool3, ``forward(x)`` -> (B, 1008) logits."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state.get("state_dict", state)


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """FIDInceptionV3 in eval mode with the weights of ``path`` (.safetensors, or a .pth/.pt state dict
    read with ``weights_only=True``). Every parameter and BatchNorm statistic must be present (only
    ``num_batches_tracked`` may be missing); extra keys (torchvision's AuxLogits) are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found: {path} (give the FID Inception-v3 weights file, "
            f"e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
        )
    model = FIDInceptionV3()
    state = {k.removeprefix("module."): v for k, v in _read_state_dict(path).items()}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"{path} is not an FID Inception-v3 state dict: {len(missing)} missing keys, e.g. {missing[0]}"
        )
    return model.eval().requires_grad_(False)


def weights_fingerprint(path: str | Path) -> str:
    """First 12 hex digits of the file's SHA-256 (names the feature space in cached statistics)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) interpolation matrix of TF 1.x resize_bilinear, align_corners=False: source
    coordinate s = i * n_in / n_out, weights (1 - frac, frac) on floor(s) and min(floor(s) + 1, n_in - 1)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m


def resize_tf1_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF 1.x ``resize_bilinear(align_corners=False)`` of (B, C, H, W) to size x size (torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x``), as two interpolation matrices, in x's dtype."""
    mh = _tf1_bilinear_matrix(x.shape[2], size).to(device=x.device, dtype=x.dtype)
    mw = _tf1_bilinear_matrix(x.shape[3], size).to(device=x.device, dtype=x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", mh, x, mw)


def preprocess(images: torch.Tensor, resize: str = "tf1-bilinear", *, quantize: bool = True) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1], C = 1 or 3 -> the network's normalized (B, 3, 299, 299) input
    under the named resize policy (module doc), float32."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; choose from {RESIZE_POLICIES}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().to(torch.float64).clamp(-1, 1) + 1) * 127.5
    if quantize:
        x = x.round()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if resize == "tf1-bilinear":
        return ((resize_tf1_bilinear(x) - 128) / 128).float()
    if resize == "clean-bicubic":
        y = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True)
        return ((y.clamp(0, 255) - 128) / 128).float()
    y = F.interpolate(x / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (2 * y - 1).float()


class InceptionFeatureExtractor:
    """FID/KID features: images (N, C, H, W) in [-1, 1] -> (N, 2048) pool3 activations, in batches.
    ``name`` identifies the feature space (weights fingerprint and resize policy) for cached
    statistics. The network runs on ``device`` (the images are moved there batch by batch; the
    features come back on the CPU)."""

    def __init__(
        self,
        weights: str | Path,
        *,
        resize: str = "tf1-bilinear",
        quantize: bool = True,
        batch_size: int = 50,
        device: torch.device | str = "cpu",
    ):
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {resize!r}; choose from {RESIZE_POLICIES}")
        self.device = torch.device(device)
        self.model = load_fid_inception(weights).to(self.device)
        self.resize, self.quantize, self.batch_size = resize, quantize, batch_size
        self.name = f"inception-v3-fid:{weights_fingerprint(weights)}:{resize}:{'q8' if quantize else 'float'}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        feats = [
            self.model.features(preprocess(chunk.to(self.device), self.resize, quantize=self.quantize)).cpu()
            for chunk in images.split(self.batch_size)
        ]
        return torch.cat(feats)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, *, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3 features (N, 2048), logits (N, 1008)) in one pass, float64 on the CPU; ``progress``
        shows a bar over the batches (on a terminal)."""
        from tqdm import tqdm

        feats, logits = [], []
        chunks = images.split(self.batch_size)
        for chunk in tqdm(chunks, desc="inception", unit="batch", disable=None if progress else True, leave=False):
            f = self.model.features(preprocess(chunk.to(self.device), self.resize, quantize=self.quantize))
            feats.append(f.double().cpu())
            logits.append(self.model.fc(f).double().cpu())
        return torch.cat(feats), torch.cat(logits)


__all__ = [
    "FIDInceptionV3",
    "INPUT_SIZE",
    "InceptionFeatureExtractor",
    "RESIZE_POLICIES",
    "load_fid_inception",
    "preprocess",
    "resize_tf1_bilinear",
    "weights_fingerprint",
]
