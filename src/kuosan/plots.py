"""Pictures of diffusion at work, each a PIL image: training curves, the denoising trajectory (a strip
or an animation of x_t and x0_hat), the forward process q(x_t | x_0) with abar(t) and SNR(t), a score
field against the data, Langevin chains, captioned grids.

The functions draw what they are given (arrays and tensors); computing it (running a sampler, reading
a run) is :mod:`kuosan.app.pictures`' work. matplotlib draws through its object API on an Agg canvas
(no pyplot, no global state), so two pictures can be drawn at once, as the web app does."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from kuosan.imaging import image_grid

DPI = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _to_image(fig) -> Image.Image:
    """The figure as an RGB picture (PNG-encoded once, so what is shown is what is saved)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _grid_array(images: torch.Tensor, scale: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> an RGB grid array (for imshow)."""
    return np.asarray(image_grid(images, scale=scale).convert("RGB"))


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """TensorBoard's smoothing: the bias-corrected exponential moving average
    m_k = weight m_{k-1} + (1 - weight) v_k, divided by 1 - weight^k, over the finite values (k counts
    them); a non-finite value is shown as it is and leaves the average alone, as TensorBoard does."""
    out, m, k = np.empty(len(values)), 0.0, 0
    for i, v in enumerate(values):
        v = float(v)
        if not math.isfinite(v):
            out[i] = v
            continue
        k += 1
        m = weight * m + (1 - weight) * v
        out[i] = m / (1 - weight**k)
    return out


# --- training ------------------------------------------------------------------------------------


def training_curves(records: list[dict], *, title: str = "", smoothing: float = 0.9) -> Image.Image:
    """The panels of a training log (the records of log.jsonl): the loss with its smoothed curve
    (:func:`smooth`), the learning rate, the gradient norm (where logged) and steps per second,
    against the step."""
    step = np.array([r["step"] for r in records])
    panels = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"), ("steps_per_s", "steps/s")]
    panels = [(k, label) for k, label in panels if any(r.get(k) is not None for r in records)]
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        rows = [(s, r[key]) for s, r in zip(step, records) if r.get(key) is not None]
        xs, ys = np.array([s for s, _ in rows]), np.array([v for _, v in rows], dtype=float)
        if key == "loss":
            ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=1, label="logged")
            ax.plot(xs, smooth(ys, smoothing), color="tab:blue", lw=2, label=f"EMA ({smoothing})")
            ax.legend(loc="upper right", fontsize=8)
            if ys.min() > 0 and ys.max() / ys.min() > 10:
                ax.set_yscale("log")
        else:
            ax.plot(xs, ys, color={"lr": "tab:green", "grad_norm": "tab:red"}.get(key, "tab:purple"), lw=1.5)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _to_image(fig)


# --- sampling --------------------------------------------------------------------------------------


def _show(ax, frame: torch.Tensor, extent: float | None = None) -> None:
    """One cell: a batch of images as a grid, or 2-D points as a scatter."""
    ax.set_xticks([])
    ax.set_yticks([])
    if frame.ndim == 4:
        ax.imshow(_grid_array(frame), interpolation="nearest")
    else:
        p = frame.float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=2, color="tab:blue", alpha=0.6)
        lim = extent if extent is not None else 3.5
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")


def pick_steps(n: int, columns: int) -> list[int]:
    """``columns`` indices spread evenly over 0..n-1, the first and the last included."""
    if n <= columns:
        return list(range(n))
    return sorted({round(k * (n - 1) / (columns - 1)) for k in range(columns)})


def trajectory_strip(
    xs: Sequence[torch.Tensor], x0s: Sequence[torch.Tensor | None], sigmas: Sequence[float], *, columns: int = 8
) -> Image.Image:
    """The denoising trajectory as a strip: x_t (top) and the model's x0_hat (bottom) at ``columns``
    steps spread over the run, each a grid of the batch (or a scatter of 2-D points), titled by sigma."""
    keep = pick_steps(len(xs), columns)
    has_x0 = any(x0s[i] is not None for i in keep)
    cell = 1.9
    fig = _figure(cell * len(keep) + 0.6, cell * (2 if has_x0 else 1) + 0.5)
    axes = fig.subplots(2 if has_x0 else 1, len(keep), squeeze=False)
    for j, i in enumerate(keep):
        _show(axes[0, j], xs[i])
        last = i == len(xs) - 1 and sigmas[i] == 0  # the sample a recorded trajectory ends with
        axes[0, j].set_title("sample\nσ=0" if last else f"step {i + 1}\nσ={sigmas[i]:.3g}", fontsize=8)
        if has_x0:
            if x0s[i] is not None:
                _show(axes[1, j], x0s[i])
            else:
                axes[1, j].axis("off")
    axes[0, 0].set_ylabel("x_t", fontsize=9)
    if has_x0:
        axes[1, 0].set_ylabel("x0_hat", fontsize=9)
    return _to_image(fig)


def _font(size: int = 12):
    return ImageFont.load_default(size=size)


def trajectory_frames(
    xs: Sequence[torch.Tensor], x0s: Sequence[torch.Tensor | None], sigmas: Sequence[float], *, scale: int | None = None
) -> list[Image.Image]:
    """One frame a step for an animation: the grid of x_t beside the grid of x0_hat, with the step
    and sigma written above. 2-D points are drawn as scatter frames."""
    frames = []
    for i, (x, x0) in enumerate(zip(xs, x0s)):
        if x.ndim != 4:
            fig = _figure(3.2 * (2 if x0 is not None else 1), 3.4)
            axes = fig.subplots(1, 2 if x0 is not None else 1, squeeze=False)[0]
            _show(axes[0], x)
            axes[0].set_title("x_t")
            if x0 is not None:
                _show(axes[1], x0)
                axes[1].set_title("x0_hat")
            fig.suptitle(f"step {i + 1}/{len(xs)}  σ={sigmas[i]:.3g}")
            frames.append(_to_image(fig))
            continue
        s = scale or max(1, 128 // x.shape[-1])
        parts = [image_grid(y, scale=s).convert("RGB") for y in (x, x0) if y is not None]
        top, gap, font = 40, 8, _font()
        heading = f"step {i + 1}/{len(xs)}, sigma={sigmas[i]:.3g}"  # spelt out: PIL's fonts have no Greek
        w = sum(p.width for p in parts) + gap * (len(parts) - 1)
        w = max(w, math.ceil(font.getlength(heading)) + 4)
        frame = Image.new("RGB", (w, max(p.height for p in parts) + top), "white")
        draw = ImageDraw.Draw(frame)
        draw.text((2, 3), heading, fill="black", font=font)  # a line of its own, then each grid's name
        left = 0
        for p, label in zip(parts, ("x_t", "x0_hat")):
            frame.paste(p, (left, top))
            draw.text((left + 2, 22), label, fill="black", font=font)
            left += p.width + gap
        frames.append(frame)
    return frames


def save_animation(frames: list[Image.Image], path, *, duration_ms: int = 120, hold_ms: int = 1500) -> None:
    """An animated GIF of ``frames`` (the last held ``hold_ms``), looping."""
    durations = [duration_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)


# --- the forward process -----------------------------------------------------------------------------


def forward_process(
    x0: torch.Tensor,
    eps: torch.Tensor,
    abars: dict[str, torch.Tensor],
    *,
    show: Sequence[str],
    columns: int = 9,
) -> Image.Image:
    """q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for the same x_0 and eps at
    ``columns`` timesteps, one strip a schedule of ``show``, over abar(t) and log SNR(t) =
    log(abar / (1 - abar)) of every schedule in ``abars`` (name -> abar_t, t = 1..T)."""
    T = len(next(iter(abars.values())))
    ts = [round(1 + k * (T - 1) / (columns - 1)) for k in range(columns)]
    fig = _figure(1.5 * columns + 0.8, 1.7 * len(show) + 3.0)
    rows = fig.subfigures(2, 1, height_ratios=[1.7 * len(show), 3.0])
    axes = rows[0].subplots(len(show), columns, squeeze=False)
    for r, name in enumerate(show):
        abar = abars[name]
        for j, t in enumerate(ts):
            a = float(abar[t - 1])
            xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
            _show(axes[r, j], xt.clamp(-1, 1))
            axes[r, j].set_title(f"t={t}\nabar={a:.3f}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=10)
    a_ax, s_ax = rows[1].subplots(1, 2)
    t_frac = np.arange(1, T + 1) / T
    for name, abar in abars.items():
        a = abar.double().numpy()
        a_ax.plot(t_frac, a, lw=2, label=name)
        s_ax.plot(t_frac, np.log(a / (1 - a)), lw=2, label=name)
    a_ax.set_title("abar(t)")
    s_ax.set_title("log SNR(t) = log(abar / (1 - abar))")
    for ax in (a_ax, s_ax):
        ax.set_xlabel("t / T")
        ax.grid(alpha=0.3)
        ax.legend()
    return _to_image(fig)


# --- scores and Langevin dynamics ----------------------------------------------------------------------


def score_fields(
    grid: torch.Tensor,
    fields: dict[str, list[torch.Tensor]],
    sigmas: Sequence[float],
    *,
    data: torch.Tensor | None = None,
    extent: float = 3.0,
    notes: dict[str, list[str]] | None = None,
) -> Image.Image:
    """Score fields s(x, sigma) on the points ``grid`` (G, 2) as arrows (each row of ``fields``: a name
    and one (G, 2) field per sigma), over the data in grey. Arrows are scaled per panel, the longest
    tenth capped, so that their direction reads at every sigma; a panel's title says the largest norm."""
    fig = _figure(3.6 * len(sigmas), 3.6 * len(fields) + 0.3)
    axes = fig.subplots(len(fields), len(sigmas), squeeze=False)
    g = grid.double().numpy()
    for r, (name, per_sigma) in enumerate(fields.items()):
        for j, (s, field) in enumerate(zip(sigmas, per_sigma)):
            ax = axes[r, j]
            if data is not None:
                d = data.double().numpy()
                ax.scatter(d[:, 0], d[:, 1], s=1, color="0.7", alpha=0.5)
            f = field.double().numpy()
            length = np.linalg.norm(f, axis=1)
            norm, cap = length.max(), np.quantile(length, 0.9)  # arrows longer than the 90th percentile capped
            f = f * (np.minimum(length, cap) / np.maximum(length, 1e-12))[:, None]
            ax.quiver(g[:, 0], g[:, 1], f[:, 0], f[:, 1], color="tab:blue" if r == 0 else "tab:red", angles="xy")
            title = f"{name}, σ={s:.3g}\nmax |s|={norm:.3g}"
            if notes and notes.get(name):
                title += f"\n{notes[name][j]}"
            ax.set_title(title, fontsize=8)
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    return _to_image(fig)


def langevin_panels(
    panels: dict[str, torch.Tensor],
    *,
    paths: dict[str, torch.Tensor] | None = None,
    notes: dict[str, str] | None = None,
    extent: float = 9.0,
    title: str = "",
) -> Image.Image:
    """2-D point sets side by side (exact samples, Langevin, annealed Langevin...), each with the
    paths (S, K, 2) of a few of its chains drawn as lines and a note under its name."""
    fig = _figure(3.8 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, pts) in zip(axes, panels.items()):
        p = pts.double().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=2, color="tab:blue", alpha=0.5)
        for path in (paths or {}).get(name, []):
            q = path.double().numpy()
            ax.plot(q[:, 0], q[:, 1], lw=0.7, color="tab:orange", alpha=0.8)
            ax.plot(q[-1, 0], q[-1, 1], "o", ms=3, color="tab:red")
        ax.set_title(name + (f"\n{notes[name]}" if notes and name in notes else ""), fontsize=9)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _to_image(fig)


# --- grids ---------------------------------------------------------------------------------------------


def captioned_grid(
    images: torch.Tensor, captions: Sequence[str], *, nrow: int | None = None, scale: int | None = None
) -> Image.Image:
    """(N, C, H, W) images in [-1, 1], each with its caption (wrapped) beneath, as one picture."""
    n, _, h, w = images.shape
    scale = scale or max(1, 128 // w)
    nrow = nrow or math.ceil(math.sqrt(n))
    cw, ch = w * scale, h * scale
    font = _font(11)
    chars = max(8, cw // 6)
    lines = [textwrap.wrap(str(c), chars)[:4] or [""] for c in captions]
    text_h = 14 * max(len(x) for x in lines) + 4
    rows, pad = math.ceil(n / nrow), 4
    out = Image.new("RGB", (nrow * (cw + pad) + pad, rows * (ch + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    for i in range(n):
        r, q = divmod(i, nrow)
        x, y = pad + q * (cw + pad), pad + r * (ch + text_h + pad)
        out.paste(image_grid(images[i : i + 1], pad=0, scale=scale).convert("RGB"), (x, y))
        for k, line in enumerate(lines[i]):
            draw.text((x, y + ch + 2 + 14 * k), line, fill="black", font=font)
    return out
