r"""A small NeRF after DreamFusion (Poole et al. 2022, Sec. 3.1 and App. A.2), in plain PyTorch.

The field maps a point mu inside a sphere of radius ``bound`` to an albedo rho in [0, 1]^3 and a
density tau >= 0 (DreamFusion's notation):

    (rho, tau) = MLP(gamma(mu)),   tau = softplus(h_tau + tau_blob(mu)),   rho = sigmoid(h_rho),

gamma a positional (NeRF's sin/cos) or multiresolution hash encoding (Instant-NGP), and
tau_blob(mu) = lambda_tau (1 - ||mu|| / r) DreamFusion's density blob, which starts the
optimisation from a ball at the centre. Outside the sphere tau = 0.

Rendering (:func:`render`): rays from a pinhole camera, S stratified samples (one in each of S equal
bins) between the ray's entry into and exit from the sphere, and alpha compositing, delta_i the bin
width, alpha_i = 1 - exp(-tau_i delta_i),
w_i = alpha_i prod_{j<i} (1 - alpha_j). Normals are n = -grad_mu tau / ||grad_mu tau|| (autograd,
kept in the graph so that shading trains the geometry) and diffuse shading is

    c = rho * (l_rho * max(0, n . (l - mu) / ||l - mu||) + l_a),

with a point light l and ambient l_a (l_rho = 1 - l_a). "textureless" renders replace rho by white
(so the geometry alone must look right), "albedo" renders skip shading. A background colour per ray
direction comes from a small MLP of the direction or is fixed. The image, opacity, depth and
normal maps come back, with DreamFusion's orientation regulariser sum_i sg(w_i) max(0, n_i . d)^2
(normals that face away from the camera) and the opacity's entropy available for the loss.

Cameras: :class:`Cameras` on a sphere around the origin looking at it (azimuth, elevation, radius
and vertical field of view), y up, azimuth 0 on +z ("front").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODINGS = ("frequency", "hashgrid")
BACKGROUNDS = ("mlp", "fixed")
SHADINGS = ("lambertian", "albedo", "textureless", "normal")


class FrequencyEncoding(nn.Module):
    """NeRF's positional encoding gamma(x) = (x, sin(2^k pi x), cos(2^k pi x)) for k < n_frequencies."""

    def __init__(self, n_frequencies: int = 6, in_dim: int = 3):
        super().__init__()
        if n_frequencies < 0:
            raise ValueError(f"n_frequencies must be >= 0, got {n_frequencies}")
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_frequencies), persistent=False)
        self.out_dim = in_dim * (1 + 2 * n_frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = (x[..., None, :] * self.freqs[:, None]).flatten(-2)
        return torch.cat([x, xb.sin(), xb.cos()], dim=-1)


class HashGridEncoding(nn.Module):
    """Instant-NGP's multiresolution hash encoding (Mueller et al. 2022): ``levels`` grids of
    resolution N_l = floor(N_min b^l) between ``base_resolution`` and ``max_resolution``, each a
    table of 2^log2_size feature vectors of width ``features`` indexed by the voxel corners
    (directly where the grid fits in the table, else by the spatial hash XOR_i c_i pi_i mod T),
    trilinearly interpolated; the levels' features are concatenated. Inputs in [-bound, bound]^3."""

    PRIMES = (1, 2654435761, 805459861)

    def __init__(
        self,
        *,
        levels: int = 8,
        features: int = 2,
        log2_size: int = 15,
        base_resolution: int = 8,
        max_resolution: int = 128,
        bound: float = 1.0,
    ):
        super().__init__()
        if levels < 1 or features < 1 or not 1 <= base_resolution <= max_resolution:
            raise ValueError("need levels >= 1, features >= 1 and 1 <= base_resolution <= max_resolution")
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        self.resolutions = [int(math.floor(base_resolution * growth**lvl)) for lvl in range(levels)]
        self.size, self.bound = 2**log2_size, float(bound)
        self.tables = nn.Parameter(torch.empty(levels, self.size, features).uniform_(-1e-4, 1e-4))
        corners = torch.tensor([[(k >> d) & 1 for d in range(3)] for k in range(8)])
        self.register_buffer("corners", corners, persistent=False)
        self.out_dim = levels * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = ((x / self.bound + 1) / 2).clamp(0, 1)  # (N, 3) in the unit cube
        out = []
        for level, res in enumerate(self.resolutions):
            pos = u * res
            p0 = pos.detach().floor().clamp(max=res - 1)
            frac = pos - p0  # in [0, 1]; differentiable in x
            c = p0.long()[:, None, :] + self.corners  # (N, 8, 3)
            if (res + 1) ** 3 <= self.size:
                idx = c[..., 0] + (res + 1) * (c[..., 1] + (res + 1) * c[..., 2])
            else:
                idx = (c[..., 0] * self.PRIMES[0]) ^ (c[..., 1] * self.PRIMES[1]) ^ (c[..., 2] * self.PRIMES[2])
                idx = idx % self.size
            f = self.tables[level][idx]  # (N, 8, F)
            w = torch.where(self.corners.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # (N, 8)
            out.append((w[..., None] * f).sum(1))
        return torch.cat(out, dim=-1)


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    mods, d = [], in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class NeRF(nn.Module):
    """The field (rho, tau) = NeRF(mu) and its background (module doc). ``config`` holds the keyword
    arguments that rebuild it (``NeRF(**nerf.config)``)."""

    def __init__(
        self,
        *,
        encoding: str = "frequency",
        n_frequencies: int = 6,
        hash_levels: int = 8,
        hash_max_resolution: int = 128,
        hidden: int = 64,
        layers: int = 3,
        bound: float = 1.0,
        blob_density: float = 5.0,
        blob_radius: float = 0.2,
        background: str = "mlp",
        background_colour: tuple[float, float, float] = (0.2, 0.2, 0.2),
        background_frequencies: int = 2,
    ):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown NeRF encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown NeRF background {background!r}; choose from {', '.join(BACKGROUNDS)}")
        if not (bound > 0 and blob_radius > 0 and hidden >= 1 and layers >= 1):
            raise ValueError("need bound > 0, blob_radius > 0, hidden >= 1 and layers >= 1")
        self.config = {
            "encoding": encoding,
            "n_frequencies": n_frequencies,
            "hash_levels": hash_levels,
            "hash_max_resolution": hash_max_resolution,
            "hidden": hidden,
            "layers": layers,
            "bound": bound,
            "blob_density": blob_density,
            "blob_radius": blob_radius,
            "background": background,
            "background_colour": list(background_colour),
            "background_frequencies": background_frequencies,
        }
        self.bound, self.blob_density, self.blob_radius = float(bound), float(blob_density), float(blob_radius)
        if encoding == "frequency":
            self.encoder = FrequencyEncoding(n_frequencies)
        else:
            # forward hands the encoder mu / bound, in [-1, 1]^3
            self.encoder = HashGridEncoding(levels=hash_levels, max_resolution=hash_max_resolution, bound=1.0)
        self.mlp = _mlp(self.encoder.out_dim, hidden, layers, 4)
        self.background_kind = background
        self.register_buffer("background_rgb", torch.tensor(background_colour, dtype=torch.float32))
        if background == "mlp":
            self.background_encoder = FrequencyEncoding(background_frequencies)
            self.background_mlp = _mlp(self.background_encoder.out_dim, 16, 1, 3)

    def density_blob(self, mu: torch.Tensor) -> torch.Tensor:
        """tau_blob(mu) = lambda_tau (1 - ||mu|| / r) (DreamFusion, App. A.2), added before the activation."""
        return self.blob_density * (1 - mu.norm(dim=-1) / self.blob_radius)

    def forward(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tau (N,), rho (N, 3)) at points mu (N, 3); tau = 0 outside the bounding sphere."""
        h = self.mlp(self.encoder(mu / self.bound))
        tau = F.softplus(h[..., 0] + self.density_blob(mu))
        tau = torch.where(mu.norm(dim=-1) <= self.bound, tau, torch.zeros_like(tau))
        return tau, torch.sigmoid(h[..., 1:])

    def background(self, d: torch.Tensor) -> torch.Tensor:
        """The background colour (N, 3) in [0, 1] seen along unit ray directions d (N, 3)."""
        if self.background_kind == "fixed":
            return self.background_rgb.to(d.dtype).expand(d.shape[0], 3)
        return torch.sigmoid(self.background_mlp(self.background_encoder(d)))


# ------------------------------------------------------------------------------------------- cameras


@dataclass
class Cameras:
    """n pinhole cameras looking at the origin: ``origin`` (n, 3); ``rotation`` (n, 3, 3) with columns
    right, up and forward (unit, world frame, y up); ``fov`` (n,) vertical field of view in radians;
    ``azimuth`` and ``elevation`` (n,) in degrees (azimuth 0 on +z, counter-clockwise seen from above)."""

    origin: torch.Tensor
    rotation: torch.Tensor
    fov: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor

    def __len__(self) -> int:
        return self.origin.shape[0]

    def _map(self, fn) -> Cameras:
        return Cameras(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def __getitem__(self, index) -> Cameras:
        """The cameras at ``index`` (a slice, an index tensor or list), as Cameras."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda v: v[index])

    def to(self, device, dtype: torch.dtype | None = None) -> Cameras:
        return self._map(lambda v: v.to(device, dtype))


def orbit_cameras(azimuth, elevation, radius, fov) -> Cameras:
    """Cameras at (azimuth, elevation) degrees and ``radius`` from the origin, looking at it, with a
    vertical field of view ``fov`` degrees (each a scalar or a (n,) tensor; broadcast)."""
    values = (torch.as_tensor(v, dtype=torch.float32) for v in (azimuth, elevation, radius, fov))
    az, el, r, fv = torch.broadcast_tensors(*values)
    az, el, r, fv = (v.reshape(-1) for v in (az, el, r, fv))
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    origin = r[:, None] * torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], dim=-1)
    forward = -origin / origin.norm(dim=-1, keepdim=True)
    up_world = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.linalg.cross(forward, up_world)
    # straight overhead or below: any right vector perpendicular to the view; take the azimuth's
    fallback = torch.stack([a.cos(), torch.zeros_like(a), -a.sin()], dim=-1)
    right = torch.where(right.norm(dim=-1, keepdim=True) < 1e-6, fallback, right)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    return Cameras(origin, torch.stack([right, up, forward], dim=-1), torch.deg2rad(fv), az, el)


def check_range(name: str, lo: float, hi: float, low: float, high: float) -> None:
    """ValueError unless low <= lo <= hi <= high (a camera range that can be drawn from)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi <= high):
        raise ValueError(f"impossible {name} range [{lo}, {hi}]: need {low} <= low <= high <= {high}")


def random_cameras(
    n: int,
    *,
    azimuth: tuple[float, float] = (-180.0, 180.0),
    elevation: tuple[float, float] = (-10.0, 60.0),
    radius: tuple[float, float] = (1.0, 1.5),
    fov: tuple[float, float] = (40.0, 70.0),
    bound: float = 1.0,
    generator: torch.Generator | None = None,
) -> Cameras:
    """n cameras with azimuth, elevation (degrees), radius and field of view (degrees) drawn
    uniformly from the ranges (DreamFusion's: radius [1, 1.5], fov [40, 70]). ValueError for an
    impossible range (elevation outside [-90, 90], fov outside (0, 180), a non-positive radius)."""
    check_range("azimuth", *azimuth, -360.0, 360.0)
    check_range("elevation", *elevation, -90.0, 90.0)
    check_range("radius", *radius, 1e-3, math.inf)
    check_range("fov", *fov, 1e-3, 179.0)
    u = torch.rand(4, n, generator=generator)
    draw = [lo + (hi - lo) * u[i] for i, (lo, hi) in enumerate((azimuth, elevation, radius, fov))]
    return orbit_cameras(*draw)


def view_direction(azimuth: float, elevation: float, *, front_span: float = 90.0, overhead: float = 60.0) -> str:
    """DreamFusion's view-dependent prompt word for a camera: "overhead" above ``overhead`` degrees of
    elevation, else "front" within front_span / 2 of azimuth 0, "back" within it of 180, else "side"."""
    if elevation > overhead:
        return "overhead"
    a = (azimuth + 180.0) % 360.0 - 180.0  # in [-180, 180)
    if abs(a) <= front_span / 2:
        return "front"
    if abs(a) >= 180.0 - front_span / 2:
        return "back"
    return "side"


def camera_rays(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(origins, directions), each (n, H, W, 3): one unit ray through each pixel centre, image y down."""
    device = cams.origin.device
    tan = (cams.fov / 2).tan()[:, None, None]
    j = (torch.arange(width, device=device) + 0.5) / width * 2 - 1
    i = (torch.arange(height, device=device) + 0.5) / height * 2 - 1
    yy, xx = torch.meshgrid(-i, j * (width / height), indexing="ij")
    x, y = xx[None] * tan, yy[None] * tan  # (n, H, W)
    R = cams.rotation
    d = x[..., None] * R[:, None, None, :, 0] + y[..., None] * R[:, None, None, :, 1] + R[:, None, None, :, 2]
    d = d / d.norm(dim=-1, keepdim=True)
    return cams.origin[:, None, None, :].expand_as(d), d


def sphere_interval(o: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(near, far, hit) of rays o + s d (d unit) and the sphere ||x|| = radius; near >= 0."""
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius * radius)
    hit = disc > 0
    root = disc.clamp(min=0).sqrt()
    near, far = (-b - root).clamp(min=0), (-b + root).clamp(min=0)
    return near, far, hit & (far > near)


# ----------------------------------------------------------------------------------------- rendering


def render(
    nerf: NeRF,
    cams: Cameras,
    height: int,
    width: int,
    *,
    n_samples: int = 48,
    shading: str = "lambertian",
    light: torch.Tensor | None = None,
    ambient: float | torch.Tensor = 0.1,
    background: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    normals_graph: bool = True,
) -> dict[str, torch.Tensor]:
    """Volume-render ``cams`` (module doc). ``light``: point-light positions (n, 3) (default: at each
    camera); ``ambient`` l_a, a scalar or (n,); ``background``: colours (n, 3) replacing the field's
    own; ``generator`` jitters the stratified samples (None: interval midpoints, deterministic).
    ``normals_graph=False`` keeps the normals out of the graph (views that are only looked at).

    Returns {"image" (n, 3, H, W) in [0, 1], "opacity" (n, 1, H, W), "depth" (n, 1, H, W),
    "normal" (n, 3, H, W) in [-1, 1], "orientation" (n,) the orientation regulariser, "entropy"
    (n,) the opacity's binary entropy}."""
    if shading not in SHADINGS:
        raise ValueError(f"unknown shading {shading!r}; choose from {', '.join(SHADINGS)}")
    if n_samples < 2:
        raise ValueError(f"need at least 2 samples per ray, got {n_samples}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "render needs autograd for the density normals: call it under torch.no_grad, not inference_mode"
        )
    first = next(nerf.parameters())
    n, device = len(cams), first.device
    cams = cams.to(device, first.dtype)  # rays in the field's precision
    o, d = camera_rays(cams, height, width)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)  # (R, 3)
    near, far, hit = sphere_interval(o, d, nerf.bound)
    S = n_samples
    u = torch.arange(S, device=device, dtype=o.dtype)
    if generator is not None:
        u = u + torch.rand(o.shape[0], S, generator=generator, device=generator.device).to(device)
    else:
        u = (u + 0.5).expand(o.shape[0], S)
    s = near[:, None] + (far - near)[:, None] * u / S  # (R, S) sorted depths
    mu = o[:, None, :] + s[..., None] * d[:, None, :]  # (R, S, 3)
    training = normals_graph and torch.is_grad_enabled()
    with torch.enable_grad():  # the normals need d tau / d mu even when nothing else is trained
        mu = mu.detach().requires_grad_(True)
        tau, rho = nerf(mu.reshape(-1, 3))
        (grad,) = torch.autograd.grad(tau.sum(), mu, create_graph=training)
    if not training:
        tau, rho, grad = tau.detach(), rho.detach(), grad.detach()
    tau, rho = tau.reshape(-1, S), rho.reshape(-1, S, 3)
    normal = -grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)  # (R, S, 3)
    tau = torch.where(hit[:, None], tau, torch.zeros_like(tau))
    delta = ((far - near) / S)[:, None].expand_as(s)  # each sample stands for its bin of the interval
    alpha = 1 - torch.exp(-tau * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], dim=1), dim=1)
    w = alpha * trans  # (R, S)
    opacity = w.sum(1)

    def per_ray(v: torch.Tensor) -> torch.Tensor:  # a value per camera -> per ray
        return v.repeat_interleave(height * width, 0)

    if shading == "normal":
        colour = (normal + 1) / 2
    elif shading == "albedo":
        colour = rho
    else:
        if light is None:
            light = cams.origin
        la = torch.as_tensor(ambient, dtype=o.dtype, device=device).expand(n)
        to_light = per_ray(light.to(device))[:, None, :] - mu.detach()
        diffuse = (normal * to_light / to_light.norm(dim=-1, keepdim=True)).sum(-1).clamp(min=0)
        la = per_ray(la)[:, None, None]
        lam = (1 - la) * diffuse[..., None] + la
        colour = (rho if shading == "lambertian" else torch.ones_like(rho)) * lam
    bg = nerf.background(d) if background is None else per_ray(background.to(device, o.dtype))
    image = (w[..., None] * colour).sum(1) + (1 - opacity)[:, None] * bg
    depth = (w * s).sum(1)
    normal_map = (w[..., None] * normal).sum(1)

    orient = (w.detach() * (normal * d[:, None, :]).sum(-1).clamp(min=0) ** 2).sum(1)
    a = opacity.clamp(1e-5, 1 - 1e-5)
    entropy = -(a * a.log2() + (1 - a) * (1 - a).log2())

    def img(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(n, height, width, -1).permute(0, 3, 1, 2)

    return {
        "image": img(image),
        "opacity": img(opacity[:, None]),
        "depth": img(depth[:, None]),
        "normal": img(normal_map),
        "orientation": orient.reshape(n, -1).mean(1),
        "entropy": entropy.reshape(n, -1).mean(1),
    }


__all__ = [
    "BACKGROUNDS",
    "Cameras",
    "ENCODINGS",
    "FrequencyEncoding",
    "HashGridEncoding",
    "NeRF",
    "SHADINGS",
    "camera_rays",
    "check_range",
    "orbit_cameras",
    "random_cameras",
    "render",
    "sphere_interval",
    "view_direction",
]
