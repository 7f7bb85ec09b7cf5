"""``kuosan serve``: a local web app (gradio) that generates from trained runs and shows the denoising
at work.

Each request goes through the same application functions as the command line (:func:`kuosan.app.sample`,
:func:`kuosan.app.text_to_image`), so its errors are the CLI's one-line errors, shown in the page.
Requests wait in one queue and run one at a time (the networks are shared); every picture the app
writes, gradio's own copies included, goes under its output folder."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kuosan import app, plots
from kuosan.config import ConfigError
from kuosan.diffusion.schedules import GRIDS
from kuosan.interop import diffusers as hf
from kuosan.pipelines import DEFAULT_GUIDANCE
from kuosan.samplers import SAMPLERS
from kuosan.train import checkpoint as ckpt

MAX_IMAGES = 64  # images per request
MAX_STEPS = 1000  # sampler steps per request (DDPM's T): the queue serves one request at a time
MAX_SEED = 2**63 - 1
TASKS = ("txt2img", "img2img", "inpaint")
RUN_DEFAULT = "(the run's)"
MASK_COLOUR = ("#ff00ff", 0.6)  # the inpainting brush: translucent magenta, seen on dark and light pictures


@dataclass
class Model:
    """A run the app serves: what it is, and what a request may ask of it."""

    name: str
    spec: str
    kind: str  # unconditional, class, text (a pipeline's: text-conditional or latent)
    sampler: str
    steps: int
    what: str = ""  # what the page says the model is
    classes: list[str] = field(default_factory=list)
    guidance: float | None = None
    image_size: tuple[int, int] | None = None
    pipeline: object = None  # a text run's pipeline, loaded on first use

    def describe(self) -> str:
        return f"**{self.name}**: {self.what}; {self.sampler}, {self.steps} steps"


def describe_run(spec: str) -> Model:
    """The :class:`Model` of a run directory or ``diffusers:DIR``; ConfigError (one line) for a
    folder that is neither, or an autoencoder run (it does not generate)."""
    spec = str(spec)
    if hf.is_diffusers_spec(spec):
        folder = hf.folder_of(spec)
        index = folder / "model_index.json"
        text = index.is_file() and "text_encoder" in json.loads(index.read_text())
        what = "a diffusers text-to-image pipeline" if text else "a diffusers unconditional U-Net"
        return Model(
            folder.name, spec, "text" if text else "unconditional", "ddim", 50, what, guidance=7.5 if text else None
        )
    path = Path(spec)
    if not path.is_dir():
        raise ConfigError(f"run directory not found: {path}")
    from kuosan.config import Config

    cfg = Config.from_dict(ckpt.read_config(path))
    state = ckpt.read_state(path)
    if cfg.model.network in ("vae", "ae"):
        raise ConfigError(f"{path} is an autoencoder run: it reconstructs, it does not generate")
    shape = tuple(state["data_shape"])
    size = tuple(shape[-2:]) if len(shape) == 3 and not cfg.latent.autoencoder else None  # latents: the decoder's
    if len(shape) == 1:
        data = f"{shape[0]}-D points"
    elif cfg.latent.autoencoder:
        data = "latents " + "x".join(map(str, shape))
    else:
        data = f"{shape[-1]}x{shape[-2]}"
    if cfg.text.encoder or cfg.latent.autoencoder:
        kind, guidance = "text", DEFAULT_GUIDANCE  # the pipeline's own default, shown in the page
        what = "text-conditional" if cfg.text.encoder else "unconditional"
    elif cfg.label.classes:
        kind, guidance, what = "class", cfg.label.guidance, f"class-conditional ({cfg.label.classes} classes)"
    else:
        kind, guidance, what = "unconditional", None, "unconditional"
    names = [str(x) for x in cfg.label.names] or [str(k) for k in range(cfg.label.classes)]
    return Model(path.name, spec, kind, cfg.sample.sampler, cfg.sample.steps, f"{what}, {data}", names, guidance, size)


class Server:
    """The app's state: the runs it serves and the folder it writes to."""

    def __init__(self, runs: list[str], out: str | Path):
        if not runs:
            raise ConfigError("give at least one run to serve")
        self.models: dict[str, Model] = {}
        for spec in runs:
            model = describe_run(spec)
            name, k = model.name, 2
            while name in self.models:  # two runs of the same folder name
                name, k = f"{model.name} ({k})", k + 1
            model.name = name
            self.models[name] = model
        self.out = Path(out)
        try:
            (self.out / "images").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out: cannot create {self.out}: {e.strerror}") from None
        self.lock = threading.Lock()  # one generation at a time, also for calls outside the queue

    # --- one request -------------------------------------------------------------------------------

    def generate(
        self,
        run: str,
        sampler: str,
        grid: str,
        steps,
        eta,
        seed,
        n,
        class_label: str,
        prompt: str,
        negative: str,
        guidance,
        task: str,
        image,
        strength,
        on_step=None,
    ) -> dict:
        """One request, validated as the CLI validates (ConfigError, one line): the samples' grid
        and its file, the trajectory's frames (x_t beside x0_hat at every step) and a summary."""
        model = self.models.get(run)
        if model is None:
            raise ConfigError(f"unknown run {run!r}; this app serves: {', '.join(self.models)}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        if grid not in (RUN_DEFAULT, *GRIDS, "scheduler"):
            raise ConfigError(f"unknown grid {grid!r}; known: {', '.join(GRIDS)}")
        steps, n, seed = (
            _integer("steps", steps, 1, MAX_STEPS),
            _integer("batch size", n, 1, MAX_IMAGES),
            _integer("seed", seed, 0, MAX_SEED),
        )
        eta = _number("eta", eta, 0.0)  # None (blank): the sampler's own default
        task = task or "txt2img"
        if task not in TASKS:
            raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
        prompt, negative = (prompt or "").strip(), (negative or "").strip()
        if model.kind != "text" and (prompt or negative):
            raise ConfigError(f"{model.name} is not text-conditional: it takes no prompt (clear the prompt fields)")
        if model.kind != "class" and class_label not in (None, "", "all"):
            raise ConfigError(f"{model.name} is not class-conditional: it takes no class (choose all)")
        if model.kind != "text" and task != "txt2img":
            raise ConfigError(f"{task} needs a text-conditional run; {model.name} is {model.kind}")
        if eta is not None and model.kind == "text":
            raise ConfigError(f"{model.name} samples with the sampler's own eta, as txt2img does: leave eta blank")
        takes_eta = "eta" in app.sampler_options(sampler)
        if eta and not takes_eta:  # 0 is what a deterministic sampler does anyway
            raise ConfigError(f"sampler {sampler} takes no eta (leave it blank, or pick ddim or an ancestral sampler)")
        options = {"eta": eta} if eta is not None and takes_eta else {}
        common = dict(sampler=sampler, steps=steps, grid=None if grid == RUN_DEFAULT else grid, seed=seed)
        with self.lock:
            start = time.perf_counter()
            if model.kind == "text":
                x, trajectory = self._text(model, task, n, prompt, negative, guidance, image, strength, common, on_step)
            else:
                trajectory = app.trajectory_for(model.spec, on_step=on_step, keep=MAX_IMAGES)
                label = None if model.kind != "class" else (class_label or "all")
                scale = None if model.kind != "class" else _number("guidance", guidance, None)
                x = app.sample(
                    model.spec, n, class_label=label, guidance=scale, callback=trajectory, **common, **options
                )
            seconds = time.perf_counter() - start
        trajectory.finish(x)
        return self._write(model, x, trajectory, prompt, seconds)

    def _text(self, model, task, n, prompt, negative, guidance, image, strength, common, on_step):
        if model.pipeline is None:
            model.pipeline = app.load_pipeline(model.spec)
        pipe = model.pipeline
        trajectory = app.Trajectory(decode=pipe.decode, on_step=on_step, keep=MAX_IMAGES)
        picture = mask = None
        if task != "txt2img":
            picture, mask = _editor_images(image, model.image_size or tuple(pipe.image_shape()[-2:]), task)
        x = app.text_to_image(
            pipe,
            prompt,
            task=task,
            n=n,
            image=picture,
            mask=mask,
            strength=_number("strength", strength, 0.0) if task != "txt2img" else None,
            guidance=_number("guidance", guidance, None),
            negative=negative or None,
            callback=trajectory,
            **common,
        )
        return x, trajectory

    def _write(self, model, x, trajectory, prompt, seconds) -> dict:
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        grid = self.out / "images" / f"{stem}.png"
        if x.ndim == 4:
            picture = plots.captioned_grid(x, [prompt] * len(x)) if prompt else None
            picture = picture or _grid(x)
        else:
            from kuosan.imaging import scatter_plot

            picture = scatter_plot(x)
        picture.save(grid)
        xs, x0s, sigmas = trajectory.frames()
        frames = plots.trajectory_frames(xs, x0s, sigmas)
        captions = [f"step {i + 1}/{len(frames) - 1}, σ={s:.3g}" for i, s in enumerate(sigmas[:-1])] + ["sample"]
        summary = (
            f"{len(x)} sample{'s' if len(x) > 1 else ''} from {model.name} in {seconds:.1f} s, "
            f"{len(frames) - 1} steps; saved {grid.name}"
        )
        return {"grid": picture, "file": str(grid), "frames": list(zip(frames, captions)), "summary": summary}


def _grid(x: torch.Tensor) -> Image.Image:
    from kuosan.imaging import image_grid

    return image_grid(x, scale=max(1, 128 // x.shape[-1]))


def _integer(what: str, value, low: int, high: int | None = None) -> int:
    """``value`` (an int, a whole float or its text) as an int in [low, high]; ConfigError otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = int(value) if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()) else None
        f = float(value) if v is None else None
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None
    if v is None:
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{what} must be a whole number, got {value!r}")
        v = int(f)
    if v < low or (high is not None and v > high):
        bounds = f"at least {low}" + (f" and at most {high}" if high is not None else "")
        shown = v if abs(v) < 10**20 else f"a number of about {int(v.bit_length() * math.log10(2))} digits"
        raise ConfigError(f"{what} must be {bounds}, got {shown}")
    return v


def _eta_hint(sampler: str) -> str:
    """What a blank eta means for ``sampler``: its own default, or that it takes none."""
    eta = inspect.signature(SAMPLERS[sampler]).parameters.get("eta") if sampler in SAMPLERS else None
    return "no eta: deterministic" if eta is None else f"blank: the sampler's own, {eta.default:g}"


def _number(what: str, value, low: float | None):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (low is not None and v < low):
        raise ConfigError(f"{what} must be a finite number" + (f" of at least {low}" if low is not None else ""))
    return v


def _editor_images(value, size: tuple[int, int], task: str):
    """(image (1, 3, H, W) in [-1, 1], mask (1, 1, H, W) or None) of the image editor's value (the
    uploaded background, the strokes drawn over it: white = repaint), resized to the model's size."""
    if not value or value.get("background") is None:
        raise ConfigError(f"{task} needs an image: upload one")
    background = Image.fromarray(np.asarray(value["background"])).convert("RGB")
    h, w = size
    image = torch.from_numpy(np.asarray(background.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1)
    image = image.permute(2, 0, 1)[None]
    if task != "inpaint":
        return image, None
    strokes = np.zeros(background.size[::-1], bool)
    for layer in value.get("layers") or []:
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[-1] == 4:
            if arr.shape[:2] != strokes.shape:
                raise ConfigError(
                    f"the mask is {arr.shape[1]}x{arr.shape[0]} but the image {strokes.shape[1]}x{strokes.shape[0]}"
                )
            strokes |= arr[..., 3] > 0
    if not strokes.any():
        raise ConfigError("inpaint needs a mask: draw over the part of the image to repaint")
    mask = Image.fromarray(strokes.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
    return image, torch.from_numpy(np.asarray(mask) > 127).float()[None, None]


# --- the page -------------------------------------------------------------------------------------------


def build_app(server: Server):
    """The gradio Blocks of ``server``: the controls, the result grid with its download, the
    trajectory gallery; ``generate`` is also the API endpoint /generate."""
    import gradio as gr

    first = next(iter(server.models.values()))
    free = {"allow_custom_value": True}  # a value outside the choices reaches Server.generate, which names them
    # gradio's copies of the pictures it served are removed a day after (the grids stay in images/)
    with gr.Blocks(title="kuosan", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown("# kuosan\nGenerate from trained runs and watch the denoising: x_t and the model's x0_hat.")
        with gr.Row():
            with gr.Column(scale=1):
                run = gr.Dropdown(list(server.models), value=first.name, label="run", elem_id="run", **free)
                about = gr.Markdown(first.describe(), elem_id="about")
                sampler = gr.Dropdown(list(SAMPLERS), value=first.sampler, label="sampler", elem_id="sampler", **free)
                grid = gr.Dropdown([RUN_DEFAULT, *GRIDS], value=RUN_DEFAULT, label="noise-level grid", **free)
                with gr.Row():
                    # precision None: the value as given, which Server.generate checks (0 would round 2.5 to 2)
                    steps = gr.Number(value=first.steps, precision=None, label="steps", elem_id="steps")
                    # a text field: gradio's number field shows and sends 0 for blank, and a blank eta is
                    # the sampler's own (1 for the ancestral samplers), not 0
                    eta = gr.Textbox(
                        value="",
                        label="eta",
                        placeholder=_eta_hint(first.sampler),
                        visible=first.kind != "text",
                        elem_id="eta",
                    )
                with gr.Row():
                    seed = gr.Number(value=0, precision=None, label="seed", elem_id="seed")
                    n = gr.Number(value=16, precision=None, label="batch size", elem_id="batch")
                label = gr.Dropdown(
                    ["all", *first.classes],
                    value="all",
                    label="class",
                    visible=first.kind == "class",
                    elem_id="class",
                    **free,
                )
                prompt = gr.Textbox(label="prompt", visible=first.kind == "text", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt", visible=first.kind == "text", elem_id="negative")
                guidance = gr.Number(
                    value=first.guidance, label="guidance", visible=first.kind in ("text", "class"), elem_id="guidance"
                )
                with gr.Accordion("image-to-image and inpainting", open=False, visible=first.kind == "text") as edit:
                    task = gr.Radio(list(TASKS), value="txt2img", label="task", elem_id="task")
                    image = gr.ImageMask(
                        label="image (draw the region to repaint)",
                        type="numpy",
                        elem_id="image",
                        brush=gr.Brush(colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed"),
                    )  # the strokes' colour is only shown: where they are (their alpha) is the mask
                    strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="strength")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                result = gr.Image(label="samples", type="pil", elem_id="result", format="png")
                download = gr.File(label="download", elem_id="download")
                frames = gr.Gallery(label="trajectory: x_t | x0_hat", columns=6, elem_id="trajectory", format="png")

        def pick(name):
            """The controls of run ``name``, reset: a field another run left set and this one hides
            would otherwise refuse every request."""
            m = server.models.get(name)
            if m is None:
                raise gr.Error(f"unknown run {name!r}; this app serves: {', '.join(server.models)}")
            text = m.kind == "text"
            return (
                m.describe(),
                gr.update(value=m.sampler),
                gr.update(value=m.steps),
                gr.update(value="", placeholder=_eta_hint(m.sampler), visible=not text),
                gr.update(choices=["all", *m.classes], value="all", visible=m.kind == "class"),
                gr.update(value="", visible=text),
                gr.update(value="", visible=text),
                gr.update(value=m.guidance, visible=text or m.kind == "class"),
                gr.update(visible=text),
                gr.update(value="txt2img"),
            )

        run.change(
            pick, run, [about, sampler, steps, eta, label, prompt, negative, guidance, edit, task], api_name=False
        )
        sampler.change(lambda name: gr.update(placeholder=_eta_hint(name)), sampler, eta, api_name=False)

        def generate(run, sampler, grid, steps, eta, seed, n, label, prompt, negative, guidance, task, image, strength,
                     progress=gr.Progress()):  # noqa: B008  (gradio's way of asking for a progress bar)  # fmt: skip
            try:
                total = max(1, int(steps))
            except (TypeError, ValueError, OverflowError):  # refused below, in one line
                total = 1
            try:
                out = server.generate(
                    run, sampler, grid, steps, eta, seed, n, label, prompt, negative, guidance, task, image, strength,
                    on_step=lambda calls: progress(min(calls / total, 1.0), desc=f"step {min(calls, total)}/{total}"),
                )  # fmt: skip
            except (ValueError, OSError) as e:  # ConfigError, DataError, DeviceError...: the CLI's one line
                raise gr.Error(str(e).splitlines()[0] if str(e) else type(e).__name__, print_exception=False) from None
            return out["grid"], out["file"], out["frames"], out["summary"]

        go.click(
            generate,
            [run, sampler, grid, steps, eta, seed, n, label, prompt, negative, guidance, task, image, strength],
            [result, download, frames, status],
            api_name="generate",
        )
    return page


def serve(
    runs: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    out: str | Path = "kuosan-web",
    block: bool = True,
    on_start=None,
):
    """Start the app on ``host``:``port`` (loopback by default); requests queue and run one at a time.
    ``on_start(url)`` is told where it listens. Returns (page, url); with ``block`` it serves until
    interrupted."""
    server = Server(runs, out)
    _confine_gradio_files(Path(out).resolve() / "cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    page = build_app(server)
    page.queue(default_concurrency_limit=1, max_size=64)
    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            show_error=True,
            allowed_paths=[str(Path(out).resolve() / "images")],
            ssr_mode=False,
            theme=_theme(),
            footer_links=["api"],
        )
    except OSError as e:  # the port is taken
        raise ConfigError(f"cannot serve on {host}:{port}: {str(e).splitlines()[0]}") from None
    if on_start is not None:
        on_start(url)
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return page, url


def _confine_gradio_files(cache: Path) -> None:
    """Make ``cache`` gradio's scratch folder (its copies of the pictures it serves, the folders its
    server makes at start). gradio reads GRADIO_TEMP_DIR at run time in some places and once, when
    its modules are imported, in others: both are pointed at ``cache``, so nothing lands outside the
    output folder even where gradio was imported before the app started (the Python API, tests)."""
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    for name in ("gradio.route_utils", "gradio.routes", "gradio.mcp", "gradio.screen_recording_utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "DEFAULT_TEMP_DIR"):
            module.DEFAULT_TEMP_DIR = str(cache)


def _theme():
    """gradio's default look with the system's fonts: nothing fetched from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


__all__ = ["MAX_IMAGES", "Model", "Server", "build_app", "describe_run", "serve"]
