"""DreamFusion (``kuosan dreamfusion``): a small NeRF optimised through a frozen text-conditional
model by score distillation (Poole et al. 2022; :mod:`kuosan.networks.nerf` is the field and its
renderer, :mod:`kuosan.distill.sds` the gradient).

Each step draws a random camera, renders the NeRF (albedo-only during the warm-up, then diffuse
shading with a random point light and ambient level, or "textureless" with a given probability),
maps the render to what the denoiser works on (through the frozen VAE encoder of a latent model, as
stable-dreamfusion does; the pixels of a pixel model), and puts the SDS gradient on it, plus the
orientation and opacity regularisers. The output folder gets ``views.npy``, ``turntable.gif``,
``nerf.safetensors`` + ``config.json``, ``log.jsonl`` and, if asked, a mesh.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from kuosan import devices
from kuosan.app.distillation import check_prompt_length, load_text_pipeline, model_input
from kuosan.config import ConfigError
from kuosan.distill.sds import T_SCHEDULES, WEIGHTINGS, ScoreDistillation, decoded_sds_gradient, sds_surrogate
from kuosan.networks.nerf import NeRF, check_range, orbit_cameras, random_cameras, render, view_direction
from kuosan.utils import replaced_whole, unwritable_reason

VIEW_WORDS = ("front", "side", "back", "overhead")
VIEWS_ELEVATION = 15.0  # the 8 views of views.npy: evenly spaced azimuths at this elevation
VIEWS_AMBIENT = 0.3  # their shading: a light at the camera, this much ambient


def _writable_folder(out: Path) -> None:
    """ConfigError unless ``out`` is an empty folder, or one that can be made, where this process can
    write (checked before any work; the folder itself is made only when there is something to write)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; give a new one")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is not a folder")
    reason = unwritable_reason(parent)
    if reason is not None:
        raise ConfigError(f"--out {out}: {parent} is not writable ({reason})")


def check_finite(nerf: NeRF, where: str) -> None:
    """ConfigError naming the first parameter of the NeRF that holds a NaN or an infinity."""
    for name, p in nerf.named_parameters():
        if not torch.isfinite(p).all():
            raise ConfigError(f"the NeRF's parameter {name} is not finite ({where}); try a smaller --lr or --grad-clip")


def save_nerf(nerf: NeRF, folder: Path, settings: dict) -> None:
    """nerf.safetensors (the parameters) and config.json ({"nerf": NeRF's keyword arguments, **settings}),
    each written to a temporary name and renamed into place."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in nerf.state_dict().items()}
    with replaced_whole(folder / "nerf.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "kuosan-nerf"})
    with replaced_whole(folder / "config.json") as tmp:
        tmp.write_text(json.dumps({"nerf": nerf.config, **settings}, indent=2) + "\n")


def load_nerf(path: str | Path) -> tuple[NeRF, dict]:
    """(NeRF, config) of a ``nerf.safetensors`` (or its folder) with its ``config.json`` beside it;
    ConfigError for a missing or unreadable file, or parameters that are not finite."""
    path = Path(path)
    if path.is_dir():
        path = path / "nerf.safetensors"
    config_path = path.with_name("config.json")
    if not path.is_file() or not config_path.is_file():
        raise ConfigError(f"no NeRF at {path} (need nerf.safetensors and config.json beside it)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads(config_path.read_text())
        nerf = NeRF(**config["nerf"])
        nerf.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ConfigError(f"cannot load the NeRF {path}: {str(e).splitlines()[0]}") from None
    check_finite(nerf, f"in {path}")
    return nerf, config


@torch.no_grad()
def views(
    nerf: NeRF,
    size: tuple[int, int],
    *,
    n: int = 8,
    radius: float,
    fov: float,
    shading: str = "lambertian",
    n_samples: int = 48,
):
    """n renders (n, 3, H, W) in [-1, 1] at evenly spaced azimuths (0 = front) at VIEWS_ELEVATION,
    lit from the camera with VIEWS_AMBIENT ambient."""
    cams = orbit_cameras(torch.arange(n) * (360.0 / n), VIEWS_ELEVATION, radius, fov)
    out = render(nerf, cams, *size, n_samples=n_samples, shading=shading, ambient=VIEWS_AMBIENT, normals_graph=False)
    return out["image"].cpu() * 2 - 1, out


def write_turntable(
    nerf: NeRF, path: Path, size: tuple[int, int], *, radius: float, fov: float, frames: int = 24, n_samples: int = 48
):
    """An animated GIF: shaded, textureless and normal renders side by side, one turn of azimuths,
    each render enlarged 4x (nearest)."""
    from PIL import Image

    rows = []
    for shading in ("lambertian", "textureless", "normal"):
        if shading == "normal":
            _, out = views(nerf, size, n=frames, radius=radius, fov=fov, n_samples=n_samples)
            img = (out["normal"] * 0.5 + 0.5) * out["opacity"] + (1 - out["opacity"]) * 0.0
        else:
            img = (views(nerf, size, n=frames, radius=radius, fov=fov, shading=shading, n_samples=n_samples)[0] + 1) / 2
        rows.append(img.cpu().clamp(0, 1))
    strip = torch.cat(rows, dim=3)  # (frames, 3, H, 3W)
    strip = torch.nn.functional.interpolate(strip, scale_factor=4, mode="nearest")
    arrays = (strip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pictures = [Image.fromarray(a) for a in arrays]
    with replaced_whole(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=120, loop=0)


def save_mesh(nerf: NeRF, path: Path, *, resolution: int = 96, level: float | None = None) -> dict:
    """The density's level set tau = ``level`` (default ln 2 / (0.1 bound): the density at which a
    shell a twentieth of the sphere's diameter thick is half opaque) as a triangle mesh with albedo vertex colours
    (scikit-image's marching cubes), written as .ply (binary little-endian) or .obj (with vertex
    colours after the coordinates, as MeshLab reads them). Returns {vertices, faces}."""
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise ConfigError("--save-mesh needs scikit-image (pip install 'kuosan[mesh]')") from None
    b = nerf.bound
    level = math.log(2) / (0.1 * b) if level is None else float(level)
    axis = torch.linspace(-b, b, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    device = next(nerf.parameters()).device
    with torch.no_grad():
        tau = torch.cat([nerf(chunk.to(device))[0].cpu() for chunk in grid.split(65536)])
    tau = tau.reshape(resolution, resolution, resolution).numpy()
    if not tau.min() < level < tau.max():
        raise ConfigError(f"the density never crosses the mesh level {level} (range {tau.min():.3g}..{tau.max():.3g})")
    verts, faces, _, _ = marching_cubes(tau, level=level, spacing=(2 * b / (resolution - 1),) * 3)
    verts = verts - b
    with torch.no_grad():
        rho = nerf(torch.from_numpy(verts.astype(np.float32)).to(device))[1].cpu().numpy()
    with replaced_whole(path) as tmp:
        _write_mesh(tmp, verts, faces, rho)
    return {"vertices": int(len(verts)), "faces": int(len(faces))}


def _write_mesh(tmp: Path, verts: np.ndarray, faces: np.ndarray, rho: np.ndarray) -> None:
    if tmp.suffix == ".obj":
        with open(tmp, "w") as f:
            for v, c in zip(verts, rho):
                f.write(f"v {v[0]:.5f} {v[1]:.5f} {v[2]:.5f} {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}\n")
            for face in faces + 1:
                f.write(f"f {face[0]} {face[1]} {face[2]}\n")
    else:
        vertex = np.empty(len(verts), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
        vertex["xyz"], vertex["rgb"] = verts, (rho.clip(0, 1) * 255).round().astype(np.uint8)
        face = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", 3)])
        face["n"], face["idx"] = 3, faces
        header = (
            "ply\nformat binary_little_endian 1.0\n"
            f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\n"
            f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
        )
        with open(tmp, "wb") as f:
            f.write(header.encode())
            f.write(vertex.tobytes())
            f.write(face.tobytes())


def _view_conditioning(pipe, prompt: str, negative: str, view_prompts: bool, perp_neg: bool, n: int):
    """{view word or None: (cond, uncond)} of the prompt (with ", <view> view" appended per view)."""
    words = VIEW_WORDS if view_prompts or perp_neg else (None,)
    texts = {w: prompt if w is None else f"{prompt}, {w} view" for w in words}
    check_prompt_length(pipe, [*texts.values(), negative])
    return {w: pipe._encode([t] * n, negative or None) for w, t in texts.items()}


def dreamfusion(
    run_dir: str | Path,
    prompt: str,
    out: str | Path,
    *,
    steps: int = 1000,
    seed: int = 0,
    guidance: float = 20.0,
    negative: str = "",
    lr: float = 5e-3,
    batch_size: int = 1,
    t_min: float = 0.02,
    t_max: float = 0.98,
    weighting: str = "1-abar",
    t_schedule: str = "anneal",
    t_max_end: float = 0.5,
    azimuth: tuple[float, float] = (-180.0, 180.0),
    elevation: tuple[float, float] = (-10.0, 60.0),
    radius: tuple[float, float] = (1.0, 1.5),
    fov: tuple[float, float] = (40.0, 70.0),
    view_prompts: bool = False,
    perp_neg: bool = False,
    perp_neg_weight: float = 1.0,
    grad_clip: float = 0.0,
    albedo_warmup: float = 0.3,
    textureless: float = 0.0,
    min_ambient: float = 0.6,
    lambda_orientation: float = 1e-2,
    lambda_entropy: float = 0.0,
    n_samples: int = 48,
    encoding: str = "frequency",
    n_frequencies: int = 3,
    background: str = "fixed",
    decoded_target: bool = False,
    init: str | Path | None = None,
    mesh: str | None = None,
    mesh_level: float | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Optimise a NeRF for ``prompt`` through the frozen text model of ``run_dir`` (a kuosan text run,
    latent or pixel, or ``diffusers:DIR``) and write the results into the new folder ``out`` (module
    doc). ``view_prompts`` appends ", front/side/back/overhead view" by the camera's direction;
    ``perp_neg`` uses the other views' prompts as Perp-Neg negatives (weight ``perp_neg_weight``)
    against multi-faced objects. ``decoded_target`` (latent models): the SDS target decoded to pixels
    (:func:`kuosan.distill.sds.decoded_sds_gradient`) instead of the gradient pulled back through the
    encoder. ``init``: start from an earlier run's nerf.safetensors. ``mesh``:
    also write the density's level set tau = ``mesh_level`` (:func:`save_mesh`), "ply" or "obj".
    Returns the report (also the last line of log.jsonl)."""
    out = Path(out)
    for name, value in (("steps", steps), ("batch size", batch_size), ("samples per ray", n_samples - 1)):
        if value < 1:
            raise ConfigError(f"{name} must be at least {2 if name == 'samples per ray' else 1}, got {value}")
    for name, value in (("--lr", lr), ("--guidance", guidance), ("--grad-clip", grad_clip)):
        if not math.isfinite(value) or value < 0 or (name == "--lr" and value == 0):
            kind = "positive" if name == "--lr" else "non-negative"
            raise ConfigError(f"{name} must be a {kind} number, got {value}")
    for name, value in (("albedo warm-up", albedo_warmup), ("textureless", textureless), ("min ambient", min_ambient)):
        if not 0 <= value <= 1:
            raise ConfigError(f"the {name} fraction must lie in [0, 1], got {value}")
    if weighting not in WEIGHTINGS or t_schedule not in T_SCHEDULES:
        raise ConfigError(f"weighting is one of {', '.join(WEIGHTINGS)}, t schedule one of {', '.join(T_SCHEDULES)}")
    if mesh not in (None, "ply", "obj"):
        raise ConfigError(f"the mesh format is ply or obj, got {mesh!r}")
    try:
        for name, rng, lo, hi in (
            ("azimuth", azimuth, -360, 360), ("elevation", elevation, -90, 90), ("radius", radius, 1e-3, math.inf),
            ("fov", fov, 1e-3, 179),
        ):  # fmt: skip
            check_range(name, *rng, lo, hi)
        sds = ScoreDistillation(None, None, t_min=t_min, t_max=t_max, weighting=weighting, t_schedule=t_schedule,
                                t_max_end=t_max_end)  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None
    nerf, _ = load_nerf(init) if init is not None else (None, None)
    _writable_folder(out)

    pipe = load_text_pipeline(run_dir, device)
    try:
        conds = _view_conditioning(pipe, prompt, negative, view_prompts, perp_neg, batch_size)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    sds.schedule = pipe.schedule
    where = pipe.device
    if nerf is None:
        with torch.random.fork_rng(devices=[]):  # the NeRF's initial weights from the seed, global state kept
            torch.manual_seed(seed)
            nerf = NeRF(encoding=encoding, n_frequencies=n_frequencies, background=background)
    nerf.to(where)
    size = tuple(pipe.image_shape()[1:])
    guided = {}
    for word, (_, uncond) in conds.items():
        negatives = []
        if perp_neg and word in ("front", "side", "back"):  # the other horizontal views push away
            negatives = [conds[w][0] for w in ("front", "side", "back") if w != word]
        guided[word] = pipe._guided(
            uncond, guidance, False, pipe.latent_shape, negatives=negatives, weights=[perp_neg_weight] * len(negatives)
        )
    opt = torch.optim.Adam(nerf.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    g = torch.Generator().manual_seed(seed)
    settings = {
        "prompt": prompt, "negative": negative, "run": str(run_dir), "steps": steps, "seed": seed,
        "guidance": guidance, "lr": lr, "batch_size": batch_size, "t_min": t_min, "t_max": t_max,
        "weighting": weighting, "t_schedule": t_schedule, "t_max_end": t_max_end, "azimuth": list(azimuth),
        "elevation": list(elevation), "radius": list(radius), "fov": list(fov), "view_prompts": view_prompts,
        "perp_neg": perp_neg, "perp_neg_weight": perp_neg_weight, "grad_clip": grad_clip,
        "albedo_warmup": albedo_warmup, "textureless": textureless, "min_ambient": min_ambient,
        "lambda_orientation": lambda_orientation, "lambda_entropy": lambda_entropy, "n_samples": n_samples,
        "decoded_target": decoded_target,
    }  # fmt: skip
    seconds = {"render": 0.0, "encode": 0.0, "denoiser": 0.0, "decode": 0.0, "backward": 0.0}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out}: {e.strerror or e}") from None
    log = open(out / "log.jsonl", "w")
    from tqdm import tqdm

    start = time.perf_counter()
    try:
        bar = tqdm(range(steps), desc="dreamfusion", disable=None if progress else True, leave=False)
        for i in bar:
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            cams = random_cameras(batch_size, azimuth=azimuth, elevation=elevation, radius=radius, fov=fov, generator=g)
            u = torch.rand(2, generator=g)
            shading = "albedo" if i < albedo_warmup * steps else ("textureless" if u[0] < textureless else "lambertian")
            ambient = min_ambient + (1 - min_ambient) * u[1]
            light = cams.origin + torch.randn(batch_size, 3, generator=g)
            with devices.autocast(where, pipe.precision):
                r = render(nerf, cams, *size, n_samples=n_samples, shading=shading, light=light, ambient=ambient,
                           generator=g)  # fmt: skip
                t1 = time.perf_counter()
                x = r["image"] * 2 - 1
                in_image = decoded_target and pipe.autoencoder is not None
                with torch.set_grad_enabled(not in_image):  # the image-space target: no encoder backward
                    z = model_input(pipe, x)
                t2 = time.perf_counter()
                word = None
                if len(guided) > 1:
                    word = view_direction(float(cams.azimuth[0]), float(cams.elevation[0]))
                sds.denoiser = guided[word]
                loss, info = sds.step(z, i, steps, g, **conds[word][0])
                t3 = time.perf_counter()
                if in_image:
                    x_hat = pipe.decode(info["x0_hat"]).clone().to(where)
                    loss = sds_surrogate(x, decoded_sds_gradient(x, x_hat, info["sigma"], info["weight"]))
                t4 = time.perf_counter()
                reg = lambda_orientation * r["orientation"].mean() + lambda_entropy * r["entropy"].mean()
            (loss / batch_size + reg).backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(nerf.parameters(), grad_clip)
            opt.step()
            t5 = time.perf_counter()
            for key, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                seconds[key] += dt
            residual = float(info["residual_sq"].mean())
            if not math.isfinite(residual) or not math.isfinite(float(reg.detach())):
                raise ConfigError(f"the SDS residual became {residual} at step {i}; try a smaller --lr or --grad-clip")
            if i % 10 == 0 or i == steps - 1:
                check_finite(nerf, f"after step {i}")
                entry = {
                    "step": i, "t": int(info["t"][0]), "shading": shading, "residual_sq": round(residual, 5),
                    "orientation": float(r["orientation"].detach().mean()),
                    "opacity": float(r["opacity"].detach().mean()),
                    "seconds": round(time.perf_counter() - start, 3),
                }  # fmt: skip
                log.write(json.dumps(entry) + "\n")
                log.flush()
        check_finite(nerf, "at the end")
        elapsed = time.perf_counter() - start
        mid_r, mid_fov = sum(radius) / 2, sum(fov) / 2
        images, rendered = views(nerf, size, radius=mid_r, fov=mid_fov, n_samples=n_samples)
        with replaced_whole(out / "views.npy") as tmp:
            np.save(tmp, images.numpy().astype(np.float32))
        write_turntable(nerf, out / "turntable.gif", size, radius=mid_r, fov=mid_fov, n_samples=n_samples)
        save_nerf(nerf, out, settings)
        report = {
            "out": str(out), "prompt": prompt, "steps": steps, "seconds": round(elapsed, 1),
            "seconds_per_step": {k: round(v / steps, 4) for k, v in seconds.items()},
            "views": list(images.shape), "view_opacity": round(float(rendered["opacity"].mean()), 4),
        }  # fmt: skip
        if mesh is not None:
            report["mesh"] = {"file": f"mesh.{mesh}", **save_mesh(nerf, out / f"mesh.{mesh}", level=mesh_level)}
        log.write(json.dumps({"report": report}) + "\n")
    finally:
        log.close()
    return report


__all__ = ["dreamfusion", "load_nerf", "save_mesh", "save_nerf", "views", "write_turntable"]
