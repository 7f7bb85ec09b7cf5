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
import logging
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
from kuosan.train.checkpoint import first_non_finite
from kuosan.utils import replaced_whole, unwritable_reason

logger = logging.getLogger(__name__)

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
    name = first_non_finite(dict(nerf.named_parameters()))
    if name is not None:
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(images, maps): n renders (n, 3, H, W) in [-1, 1] at evenly spaced azimuths (0 = front) at
    VIEWS_ELEVATION, lit from the camera with VIEWS_AMBIENT ambient, and the renderer's maps
    (:func:`kuosan.networks.nerf.render`), on the CPU; one camera at a time (memory)."""
    cams = orbit_cameras(torch.arange(n) * (360.0 / n), VIEWS_ELEVATION, radius, fov)
    maps: dict[str, list[torch.Tensor]] = {}
    for k in range(n):
        out = render(
            nerf, cams[k], *size, n_samples=n_samples, shading=shading, ambient=VIEWS_AMBIENT, normals_graph=False
        )
        for key, value in out.items():
            maps.setdefault(key, []).append(value.cpu())
    joined = {key: torch.cat(v) for key, v in maps.items()}
    return joined["image"] * 2 - 1, joined


def write_turntable(
    nerf: NeRF, path: Path, size: tuple[int, int], *, radius: float, fov: float, frames: int = 24, n_samples: int = 48
) -> None:
    """An animated GIF: shaded, textureless and normal renders side by side, one turn of azimuths,
    each render enlarged 4x (nearest); normals as (n + 1) / 2 over a black background."""
    from PIL import Image

    rows = []
    for shading in ("lambertian", "textureless", "normal"):
        images, maps = views(nerf, size, n=frames, radius=radius, fov=fov, shading=shading, n_samples=n_samples)
        if shading == "normal":  # the map is the opacity-weighted normal
            rows.append(0.5 * maps["normal"] + 0.5 * maps["opacity"])
        else:
            rows.append((images + 1) / 2)
    strip = torch.cat([r.clamp(0, 1) for r in rows], dim=3)  # (frames, 3, H, 3W)
    strip = torch.nn.functional.interpolate(strip, scale_factor=4, mode="nearest")
    arrays = (strip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pictures = [Image.fromarray(a) for a in arrays]
    with replaced_whole(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=120, loop=0)


class EmptyMesh(ValueError):
    """The density never crosses the mesh's level."""


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
        raise EmptyMesh(f"the density never crosses the mesh level {level} (range {tau.min():.3g}..{tau.max():.3g})")
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


def _view_conditioning(pipe, prompt: str, negative: str, view_prompts: bool):
    """{view word or None: (cond, uncond)} of the prompt (with ", <view> view" appended per view), batch 1."""
    words = VIEW_WORDS if view_prompts else (None,)
    texts = {w: prompt if w is None else f"{prompt}, {w} view" for w in words}
    check_prompt_length(pipe, [*texts.values(), negative])
    return {w: pipe._encode([t], negative or None) for w, t in texts.items()}


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
    render_size: int | None = None,
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
    encoder. ``render_size``: render H pixels high (default the model's own size) and resize
    bilinearly to the model's size (stable-dreamfusion renders 64 for Stable Diffusion's 512).
    ``init``: start from an earlier run's nerf.safetensors (its architecture; ``steps=0`` renders and
    exports it only). ``mesh``:
    also write the density's level set tau = ``mesh_level`` (:func:`save_mesh`), "ply" or "obj".
    Returns the report (also the last line of log.jsonl)."""
    out = Path(out)
    sds = _check_options(**{k: v for k, v in locals().items() if k in _CHECKED})
    if mesh is not None:
        try:
            import skimage.measure  # noqa: F401
        except ImportError:
            raise ConfigError("--save-mesh needs scikit-image (pip install 'kuosan[mesh]')") from None
    nerf, _ = load_nerf(init) if init is not None else (None, None)
    _writable_folder(out)

    pipe = load_text_pipeline(run_dir, device)
    if pipe.image_shape()[0] != 3:
        raise ConfigError(f"{run_dir} makes {pipe.image_shape()[0]}-channel images; a NeRF renders RGB")
    view_prompts = view_prompts or perp_neg
    try:
        conds = _view_conditioning(pipe, prompt, negative, view_prompts)
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
    rsize = size if render_size is None else (render_size, render_size * size[1] // size[0])
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
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items() if k in _RECORDED}
    settings.update(run=str(run_dir), init=None if init is None else str(init), render_size=list(rsize))
    seconds = dict.fromkeys(("render", "encode", "denoiser", "decode", "backward"), 0.0)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out}: {e.strerror or e}") from None
    from tqdm import tqdm

    start, i = time.perf_counter(), -1
    with open(out / "log.jsonl", "w") as log:
        try:
            for i in tqdm(range(steps), desc="dreamfusion", disable=None if progress else True, leave=False):
                cams = random_cameras(batch_size, azimuth=azimuth, elevation=elevation, radius=radius, fov=fov,
                                      generator=g)  # fmt: skip
                u = torch.rand(2, generator=g)
                look = {
                    "shading": "albedo" if i < albedo_warmup * steps else
                               ("textureless" if u[0] < textureless else "lambertian"),
                    "ambient": min_ambient + (1 - min_ambient) * u[1],
                    "light": cams.origin + torch.randn(batch_size, 3, generator=g),
                }  # fmt: skip
                words = [None] * batch_size
                if view_prompts:
                    words = [view_direction(float(a), float(e)) for a, e in zip(cams.azimuth, cams.elevation)]
                r, info = _step(
                    nerf, opt, pipe, sds, guided, conds, cams, words, look, i, steps, g, seconds, rsize, size,
                    n_samples=n_samples, decoded_target=decoded_target, grad_clip=grad_clip,
                    lambdas=(lambda_orientation, lambda_entropy),
                )  # fmt: skip
                if i % 10 == 0 or i == steps - 1:
                    check_finite(nerf, f"after step {i}")
                    entry = {
                        "step": i, "t": int(info["t"][0]), "shading": look["shading"],
                        "residual_sq": round(info["residual"], 5),
                        "orientation": float(r["orientation"].detach().mean()),
                        "opacity": float(r["opacity"].detach().mean()),
                        "seconds": round(time.perf_counter() - start, 3),
                    }  # fmt: skip
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
        except BaseException:  # an error or an interrupt: keep what was made, if it is sound
            if i > 0 and first_non_finite(dict(nerf.named_parameters())) is None:
                save_nerf(nerf, out, {**settings, "stopped_at_step": i})
            raise
        check_finite(nerf, "at the end")
        elapsed = time.perf_counter() - start
        report = _write_results(nerf, out, settings, size, radius, fov, n_samples, mesh, mesh_level)
        report.update(prompt=prompt, steps=steps, seconds=round(elapsed, 1))
        report["seconds_per_step"] = {k: round(v / max(steps, 1), 4) for k, v in seconds.items()}
        log.write(json.dumps({"report": report}) + "\n")
    return report


_CHECKED = (
    "steps", "batch_size", "n_samples", "lr", "guidance", "grad_clip", "perp_neg_weight", "lambda_orientation",
    "lambda_entropy", "albedo_warmup", "textureless", "min_ambient", "weighting", "t_schedule", "t_min", "t_max",
    "t_max_end", "mesh", "mesh_level", "azimuth", "elevation", "radius", "fov", "init", "render_size",
)  # fmt: skip
_RECORDED = (
    "prompt", "negative", "steps", "seed", "guidance", "lr", "batch_size", "t_min", "t_max", "weighting",
    "t_schedule", "t_max_end", "azimuth", "elevation", "radius", "fov", "view_prompts", "perp_neg",
    "perp_neg_weight", "grad_clip", "albedo_warmup", "textureless", "min_ambient", "lambda_orientation",
    "lambda_entropy", "n_samples", "decoded_target",
)  # fmt: skip


def _check_options(**o) -> ScoreDistillation:
    """The run's ScoreDistillation (its denoiser and schedule set once the model is loaded), or a
    ConfigError (one line) for an option no run can use; before any work."""
    if o["steps"] < (0 if o["init"] is not None else 1):
        raise ConfigError(f"steps must be at least 1 (0 with --init: render and export only), got {o['steps']}")
    if o["batch_size"] < 1 or o["n_samples"] < 2:
        raise ConfigError(f"need a batch size >= 1 and >= 2 samples per ray, got {o['batch_size']}, {o['n_samples']}")
    if o["render_size"] is not None and o["render_size"] < 4:
        raise ConfigError(f"the render size must be at least 4 pixels, got {o['render_size']}")
    for name in ("lr", "guidance", "grad_clip", "perp_neg_weight", "lambda_orientation", "lambda_entropy"):
        value = o[name]
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            kind = "positive" if name == "lr" else "non-negative"
            raise ConfigError(f"--{name.replace('_', '-')} must be a {kind} number, got {value}")
    for name in ("albedo_warmup", "textureless", "min_ambient"):
        if not 0 <= o[name] <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1], got {o[name]}")
    if o["weighting"] not in WEIGHTINGS or o["t_schedule"] not in T_SCHEDULES:
        raise ConfigError(f"weighting is one of {', '.join(WEIGHTINGS)}, t schedule one of {', '.join(T_SCHEDULES)}")
    if o["mesh"] not in (None, "ply", "obj"):
        raise ConfigError(f"the mesh format is ply or obj, got {o['mesh']!r}")
    if o["mesh_level"] is not None and not (math.isfinite(o["mesh_level"]) and o["mesh_level"] > 0):
        raise ConfigError(f"--mesh-level must be a positive density, got {o['mesh_level']}")
    try:
        for name, lo, hi in (
            ("azimuth", -360, 360),
            ("elevation", -90, 90),
            ("radius", 1e-3, math.inf),
            ("fov", 1e-3, 179),
        ):
            check_range(name, *o[name], lo, hi)
        return ScoreDistillation(None, None, t_min=o["t_min"], t_max=o["t_max"], weighting=o["weighting"],
                                 t_schedule=o["t_schedule"], t_max_end=o["t_max_end"])  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _decode(pipe, z: torch.Tensor) -> torch.Tensor:
    """Dec(z / s + shift) on the pipeline's device, no graph, not clamped."""
    with torch.no_grad():
        return pipe.autoencoder.decode(pipe.unscale_latents(z)).float()


def _step(nerf, opt, pipe, sds, guided, conds, cams, words, look, i, steps, g, seconds, rsize, size, *, n_samples,
          decoded_target, grad_clip, lambdas):  # fmt: skip
    """One optimisation step: render the cameras (at ``rsize``, resized to the model's ``size``), map
    the renders to the denoiser's input, SDS on each group of cameras that shares a view word,
    regularisers, backward, Adam. Adds the time of each part to ``seconds``; returns (render maps,
    info with t, the mean squared residual)."""
    where = pipe.device

    def tick(key: str, t0: float) -> float:
        devices.synchronize(where)
        now = time.perf_counter()
        seconds[key] += now - t0
        return now

    opt.zero_grad(set_to_none=True)
    t = time.perf_counter()
    r = render(nerf, cams, *rsize, n_samples=n_samples, generator=g, **look)  # full precision: the NeRF trains
    x = r["image"] * 2 - 1
    if tuple(rsize) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    t = tick("render", t)
    in_image = decoded_target and pipe.autoencoder is not None
    with devices.autocast(where, pipe.precision):
        with torch.set_grad_enabled(not in_image):  # the image-space target asks no encoder backward
            z = model_input(pipe, x)
        t = tick("encode", t)
        loss, residuals, ts, targets = 0.0, [], [], []
        for word in dict.fromkeys(words):  # the cameras of one view word share a prompt
            idx = [k for k, w in enumerate(words) if w == word]
            cond = {key: v.expand(len(idx), *v.shape[1:]) for key, v in conds[word][0].items()}
            sds.denoiser = guided[word]
            part, info = sds.step(z[idx], i, steps, g, **cond)
            loss = loss + part
            residuals.append(info["residual_sq"])
            ts.append(info["t"])
            targets.append((idx, info))
        t = tick("denoiser", t)
        if in_image:  # w (Dec(z) - Dec(x0_hat)) / s: the decoder's own reconstruction error cancels
            loss = 0.0
            for idx, info in targets:
                grad = decoded_sds_gradient(_decode(pipe, z[idx]), _decode(pipe, info["x0_hat"]), info["sigma"],
                                            info["weight"])  # fmt: skip
                loss = loss + sds_surrogate(x[idx], grad)
        t = tick("decode", t)
    reg = lambdas[0] * r["orientation"].mean() + lambdas[1] * r["entropy"].mean()
    (loss / len(words) + reg).backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(nerf.parameters(), grad_clip)
    opt.step()
    tick("backward", t)
    residual = float(torch.cat(residuals).mean())
    if not math.isfinite(residual):
        raise ConfigError(f"the SDS residual became {residual} at step {i}; try a smaller --lr or --grad-clip")
    return r, {"t": torch.cat(ts), "residual": residual}


def _write_results(nerf, out, settings, size, radius, fov, n_samples, mesh, mesh_level) -> dict:
    """views.npy, turntable.gif, nerf.safetensors + config.json and the mesh; the report's part on them."""
    mid_r, mid_fov = sum(radius) / 2, sum(fov) / 2
    images, maps = views(nerf, size, radius=mid_r, fov=mid_fov, n_samples=n_samples)
    with replaced_whole(out / "views.npy") as tmp:
        np.save(tmp, images.numpy().astype(np.float32))
    write_turntable(nerf, out / "turntable.gif", size, radius=mid_r, fov=mid_fov, n_samples=n_samples)
    save_nerf(nerf, out, settings)
    report = {"out": str(out), "views": list(images.shape), "view_opacity": round(float(maps["opacity"].mean()), 4)}
    if mesh is not None:
        try:
            report["mesh"] = {"file": f"mesh.{mesh}", **save_mesh(nerf, out / f"mesh.{mesh}", level=mesh_level)}
        except EmptyMesh as e:  # not bad input: what the optimisation made has no such surface
            logger.warning("no mesh written: %s", e)
            report["mesh"] = {"skipped": str(e)}
    return report


__all__ = ["dreamfusion", "load_nerf", "save_mesh", "save_nerf", "views", "write_turntable"]
