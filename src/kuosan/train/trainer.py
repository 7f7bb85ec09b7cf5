"""The training loop: AdamW with warmup, gradient clipping, EMA, mixed precision (bf16 autocast, or
fp16 with a gradient scaler on GPUs without bf16), periodic pictures, a JSONL loss log, atomic
checkpoints, exact resume, a wall-clock budget, on any device PyTorch has.

Every random draw of training (batch indices, timesteps, noise) comes from one CPU torch.Generator
whose state is checkpointed together with the global RNGs (dropout; the GPU's too), and is moved to
the device after it is drawn, so a resumed run takes bitwise the same steps as one that was never
interrupted (same machine, same thread count), and a seed draws the same batches on every device.
A stream of image files (``data/streaming.py``: decoded by DataLoader workers, ahead) draws its batch
indices from the seed and the step alone instead, so that they are known ahead; everything else is
drawn as above, and a resume is as exact.
Checkpoints hold CPU copies: a run trained on a GPU resumes or samples on the CPU and back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from kuosan import devices
from kuosan.train import checkpoint as ckpt
from kuosan.train import distributed
from kuosan.train.cpu import make_optimizer, retain_freed_memory
from kuosan.train.ema import EMA

log = logging.getLogger(__name__)


def _stop_on_signals(received: list[int]):
    """Turn the first SIGINT or SIGTERM into a request, appended to ``received``, that the training
    loop honours at the next step boundary (so the checkpoint it then saves is the state between two
    steps, and a resume continues bitwise as if never stopped); a second signal acts at once (Ctrl-C:
    KeyboardInterrupt, nothing saved, the last checkpoint kept). Returns ``restore()``, which puts the
    previous handlers back. Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):
        received.append(signum)
        signal.signal(signum, previous[signum])

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)

    def restore():
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


def _place(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The data set on ``device`` when it takes under a quarter of the GPU's free memory; otherwise
    it stays on the CPU (in pinned memory for fast copies) and batches are moved as they are drawn."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() > free // 4:
            return t.pin_memory()
    return t.to(device)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of a state dict (checkpoints load on any device)."""
    return {k: v.detach().cpu() for k, v in tensors.items()}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _summary_writer(folder: Path):
    """PyTorch's own TensorBoard writer on ``folder`` (it needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "train.tensorboard=true needs the tensorboard package: pip install 'kuosan[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(folder))


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The global 2-norm of ``grads`` (None for none), as ``clip_grad_norm_`` computes it."""
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _is_stream(x) -> bool:
    """A stream of batches (``kuosan.data.streaming.ImageFiles``: ``indices``, ``batches``, ``shape``)
    rather than a tensor held in memory."""
    return not torch.is_tensor(x) and hasattr(x, "batches")


def _split_data(data) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(x, conditioning) of the training data: a tensor (or a stream) is x alone; a dict has x under "x"."""
    if not isinstance(data, dict):
        return data, {}
    if "x" not in data:
        raise ValueError(f"dict training data need the key 'x' (what is diffused), got keys {sorted(data)}")
    x = data["x"]
    cond = {k: v.contiguous() for k, v in data.items() if k != "x"}
    bad = sorted(k for k, v in cond.items() if v.shape[:1] != x.shape[:1])
    if bad:
        raise ValueError(f"training data {bad[0]!r} has {cond[bad[0]].shape[0]} rows but 'x' has {x.shape[0]}")
    return x, cond


class Trainer:
    """Train ``net`` on ``data`` (N, ...) to minimise an objective (``losses.objective.Objective``:
    ``draw(x0, generator)`` then ``loss(net, x0, **drawn) -> (B,)``), averaged over the batch.

    ``data`` may also be a dict of batch-first tensors: key "x" is what is diffused, the others are
    per-example conditioning (caption indices, posterior std, ...), drawn with the same batch indices
    and handed to ``objective.draw(x0, generator, **cond)``, whose draw carries them on to the loss.
    "x" (or ``data``) may be a stream of image files instead of a tensor (``data/streaming.py``); the
    objective's draw is then handed a placeholder of the global batch's shape (a draw reads only the
    shape and dtype of ``x0``), and the stream decodes this process's slice.

    ``batch_size`` is the global batch: under torchrun each of the W processes evaluates its slice
    of it, in ``grad_accum`` micro-batches (DistributedDataParallel averages the gradients).
    ``config`` is saved verbatim with every checkpoint (it must rebuild the network);
    ``sample_fn(ema_net, n, generator) -> samples`` draws the pictures (the trainer knows no sampler).

    Only parameters with ``requires_grad`` are optimised. ``saved_keys`` (None: all) are the
    state-dict keys that checkpoints keep of the weights and their EMA: a LoRA run keeps its adapter,
    and the caller rebuilds the frozen rest (the base of ``train.init_from``) before a resume.
    """

    def __init__(
        self,
        net: nn.Module,
        objective,
        data: torch.Tensor | dict[str, torch.Tensor],
        *,
        out_dir: str | Path,
        config: dict,
        batch_size: int = 128,
        grad_accum: int = 1,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        betas: tuple = (0.9, 0.999),
        warmup_steps: int = 100,
        grad_clip: float = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        tf32: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        cpu_tweaks: bool = True,
        checkpoint_every: float = 60.0,
        sample_every: int = 0,
        log_every: int = 25,
        seed: int = 0,
        sample_fn: Callable | None = None,
        progress: bool = True,
        saved_keys: list[str] | None = None,
        tensorboard: bool = False,
    ):
        if precision not in devices.DTYPES:
            raise ValueError(f"precision must be one of {', '.join(devices.DTYPES)}, got {precision!r}")
        self.device = torch.device(device)
        devices.set_tf32(self.device, tf32)
        data, self.cond_data = _split_data(data)
        if data.shape[0] == 0:
            raise ValueError("the training data set is empty")
        self.rank, self.world = distributed.rank_and_world()
        if batch_size % (self.world * grad_accum):
            raise ValueError(
                f"batch_size={batch_size} is not divisible by {self.world} processes x grad_accum={grad_accum}"
            )
        net.to(self.device)
        if hasattr(objective, "to"):  # its constant tensors (schedules, noise levels) beside the network
            objective.to(self.device)
        self.net, self.objective = net, objective
        # the data set moved to the device once when it fits easily, else batches are moved as drawn
        self.stream = _is_stream(data)
        self.data = data if self.stream else _place(data.contiguous(), self.device)
        self._batches, self._batches_at = None, None  # a stream's batch iterator, and the step it is at
        # (the conditioning stays on the CPU: the objective's draw reads it there, and the trainer moves the draw)
        self.out_dir, self.config = Path(out_dir), config
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.lr, self.warmup_steps, self.grad_clip = lr, warmup_steps, grad_clip
        self.precision, self.channels_last = precision, channels_last and len(data.shape) == 4
        self.checkpoint_every, self.sample_every, self.log_every = checkpoint_every, sample_every, log_every
        self.sample_fn, self.progress = sample_fn, progress and self.rank == 0
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        cpu_tweaks = cpu_tweaks and self.device.type == "cpu"
        if cpu_tweaks:  # process-wide: freed activations stay mapped for the next step (train/cpu.py)
            retain_freed_memory()
        # DDP broadcasts rank 0's initial weights; gradients are averaged over processes
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(net, device_ids=ids)
        else:
            self.model = net
        if compile:  # the compiled module shares net's parameters; EMA, checkpoints and pictures use net
            self.model = torch.compile(self.model)
        # the fused (one-kernel) AdamW: 3x faster than the per-parameter loop on CPU for a 6.5M U-Net;
        # with cpu_tweaks it is handed channels-last weights as dense views (train/cpu.py)
        trained = [p for p in net.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in trained)
        self.saved_keys = None if saved_keys is None else list(saved_keys)
        self.opt = make_optimizer(
            trained,
            cpu_tweaks=cpu_tweaks,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            fused=fused or None,
        )
        self.ema = EMA(net, decay=ema_decay, warmup=ema_warmup)
        self.scaler = torch.amp.GradScaler(self.device.type) if devices.needs_grad_scaler(precision) else None
        self.generator = torch.Generator().manual_seed(seed)
        self._grad_norms: list[torch.Tensor] = []  # the global gradient norm of each step since the last log
        self.writer = _summary_writer(self.out_dir / "tensorboard") if tensorboard and self.rank == 0 else None
        self.step = 0
        self.train_seconds = 0.0
        self.last_loss = float("nan")

    # --- one step -----------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then constant."""
        return self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))

    def draw_batch(self) -> tuple[torch.Tensor, dict]:
        """This process's slice of the global batch and of the objective's random draw (every
        process draws the same global batch from the same generator)."""
        per_rank = self.batch_size // self.world
        part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        if self.stream:
            index = self.data.indices(self.step, self.batch_size)
            x0 = torch.empty((self.batch_size, *self.data.shape[1:]))  # the draw reads its shape and dtype
        else:
            index = torch.randint(self.data.shape[0], (self.batch_size,), generator=self.generator)
            x0 = self.data[index.to(self.data.device)].to(self.device, non_blocking=True)
        cond = {k: v[index] for k, v in self.cond_data.items()}
        # the draw is made on the CPU (its generator) and moved: the same numbers on every device
        drawn = self.objective.draw(x0, self.generator, **cond) if cond else self.objective.draw(x0, self.generator)
        drawn = {k: v.to(self.device, non_blocking=True) for k, v in drawn.items()}
        x0 = self._next_streamed(part) if self.stream else x0[part]
        x0 = x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0
        return x0, {k: v[part] for k, v in drawn.items()}

    def _next_streamed(self, part: slice) -> torch.Tensor:
        """This process's slice of the stream's batch of the current step (workers decode ahead)."""
        if self._batches is None or self._batches_at != self.step:  # first draw, or after a resume
            self.close_stream()
            pin = self.device.type == "cuda"
            self._batches = self.data.batches(self.step, self.batch_size, part, pin_memory=pin)
        x0 = next(self._batches)
        self._batches_at = self.step + 1
        return x0.to(self.device, non_blocking=True)

    def close_stream(self) -> None:
        """Stop a stream's decoding workers (a later draw starts them again where training is)."""
        if self._batches is not None:
            self._batches.close()
        self._batches = self._batches_at = None

    def train_step(self) -> float:
        x0, drawn = self.draw_batch()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        micro = x0.shape[0] // self.grad_accum
        local = 0.0
        for m in range(self.grad_accum):
            part = slice(m * micro, (m + 1) * micro)
            sync = self.world == 1 or m == self.grad_accum - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with devices.autocast(self.device, self.precision):
                    loss = self.objective.loss(self.model, x0[part], **{k: v[part] for k, v in drawn.items()})
                    loss = loss.mean() / self.grad_accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            local += loss.item()
        value = distributed.all_sum([local])[0] / self.world
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at step {self.step}; stopped, {self._what_is_kept()}")
        if self.scaler is not None:  # true gradients for the clip; an overflowed step is skipped by step()
            self.scaler.unscale_(self.opt)
        # the global norm before the clip, logged (by the first process: every process holds the same
        # all-reduced gradients) as its mean over a log line's steps
        norm = None
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        elif self.rank == 0:
            norm = _total_norm([p.grad for p in self.net.parameters() if p.grad is not None])
        if self.rank == 0 and norm is not None:
            self._grad_norms.append(norm.detach())
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.step += 1
        self.ema.update(self.net, self.step)
        return value

    # --- checkpoints ----------------------------------------------------------------------------

    def _what_is_kept(self) -> str:
        if (self.out_dir / "checkpoint").is_dir():
            return "the last good checkpoint is kept"
        return "no checkpoint had been written yet"

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every process takes part, to gather its RNG state)."""
        model, ema = self._kept(self.net.state_dict()), self._kept(self.ema.shadow.state_dict())
        for name, weights in (("weights", model), ("EMA weights", ema)):
            key = ckpt.first_non_finite(weights)
            if key is not None:  # every process holds the same weights, so all stop
                raise TrainingDiverged(
                    f"the {name} became non-finite (first in {key!r}) at step {self.step}; "
                    f"not saved, {self._what_is_kept()}"
                )
        rng = distributed.all_gather_bytes(torch.get_rng_state())
        # dropout on a GPU draws from its own generator: every process's state, gathered by all of them
        on_gpu = self.device.type == "cuda"
        cuda_rng = distributed.all_gather_bytes(torch.cuda.get_rng_state(self.device)) if on_gpu else []
        if self.rank != 0:
            return None
        tensors, opt_meta = ckpt.optimizer_to_tensors(self.opt)
        tensors["rng.generator"] = self.generator.get_state()
        tensors.update({f"rng.torch.{r}": state for r, state in enumerate(rng)})
        tensors.update({f"rng.cuda.{r}": state for r, state in enumerate(cuda_rng)})
        state = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "last_loss": self.last_loss,
            "data_shape": list(self.data.shape[1:]),
            "world_size": self.world,
            "optimizer": opt_meta,
            "device": str(self.device),
            "precision": self.precision,
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return ckpt.save_checkpoint(
            self.out_dir,
            config=self.config,
            model=_cpu(model),
            ema=_cpu(ema),
            tensors=tensors,
            state=state,
        )

    def _kept(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state if self.saved_keys is None else {k: state[k] for k in self.saved_keys}

    def _load_kept(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        if self.saved_keys is None:
            module.load_state_dict(tensors)
            return
        if set(tensors) != set(self.saved_keys):
            other = sorted(set(tensors) ^ set(self.saved_keys))[0]
            raise ckpt.CheckpointError(f"the checkpoint in {self.out_dir} does not hold this run's weights ({other})")
        module.load_state_dict(tensors, strict=False)

    def resume(self) -> None:
        """Restore weights, EMA, optimizer, step, clocks and RNG states from ``out_dir``. With another
        number of processes than the checkpoint's, the data stream continues exactly; dropout masks
        (the per-process global RNG) do not."""
        state = ckpt.read_state(self.out_dir)
        if list(state["data_shape"]) != list(self.data.shape[1:]):
            raise ckpt.CheckpointError(
                f"the data have shape {tuple(self.data.shape[1:])} but the checkpoint in "
                f"{self.out_dir} was trained on {tuple(state['data_shape'])}"
            )
        tensors = ckpt.load_tensors(self.out_dir, "state")
        try:
            self._load_kept(self.net, ckpt.load_tensors(self.out_dir, "model"))
            self._load_kept(self.ema.shadow, ckpt.load_tensors(self.out_dir, "ema"))
            ckpt.optimizer_from_tensors(self.opt, tensors, state["optimizer"])
            self.generator.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors.get(f"rng.torch.{self.rank}", tensors["rng.torch.0"]))
            cuda_rng = tensors.get(f"rng.cuda.{self.rank}")
            if cuda_rng is not None and self.device.type == "cuda":  # (another device: dropout differs)
                torch.cuda.set_rng_state(cuda_rng, self.device)
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
        except ckpt.CheckpointError:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # shapes, missing tensors, a wrong layout
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ckpt.CheckpointError(f"the checkpoint in {self.out_dir} does not fit this run: {first}") from None
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.last_loss = float(state.get("last_loss", float("nan")))

    # --- the loop -------------------------------------------------------------------------------

    def write_samples(self, n: int = 64) -> Path | None:
        if self.sample_fn is None:
            return None
        from kuosan.imaging import save_samples_png

        g = torch.Generator().manual_seed(1234)
        samples = self.sample_fn(self.ema.shadow, n, g)
        if self.writer is not None and samples.ndim == 4:
            self.writer.add_images("samples", (samples.float().clamp(-1, 1) + 1) / 2, self.step)
            self.writer.flush()
        return save_samples_png(samples, self.out_dir / "samples" / f"step_{self.step:07d}.png")

    def _log(self, path: Path, loss: float, seconds: float, steps_per_s: float, bar) -> None:
        rec = {
            "step": self.step,
            "loss": loss,
            "lr": self.lr_at(self.step - 1),
            "seconds": round(seconds, 2),
            "steps_per_s": round(steps_per_s, 2),
        }
        if self._grad_norms:  # the finite ones: a step an fp16 overflow skipped has none
            norms = torch.stack(self._grad_norms).float()
            finite = norms[norms.isfinite()]
            rec["grad_norm"] = float(finite.mean()) if finite.numel() else None
            self._grad_norms.clear()
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "steps_per_s"):
                if rec.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", rec[key], self.step)
        bar.set_postfix(loss=f"{loss:.4f}", step=self.step)

    def _agree(self, stop: bool, checkpoint: bool, signalled: bool = False) -> tuple[bool, bool, bool]:
        """(stop, checkpoint, signalled): rank 0's clock decides when to stop and to checkpoint, a
        signal to any process stops them all; every process follows."""
        if self.world == 1:
            return stop or signalled, checkpoint, signalled
        flags = distributed.all_sum(
            [float(stop and self.rank == 0), float(checkpoint and self.rank == 0), float(signalled)]
        )
        return flags[0] > 0 or flags[2] > 0, flags[1] > 0, flags[2] > 0

    def fit(self, *, steps: int | None = None, time_budget: float | None = None) -> dict:
        """Train until ``steps`` total optimizer steps or ``time_budget`` seconds in this call, whichever
        comes first; checkpoint periodically and at the end. Returns a summary dict."""
        if steps is None and time_budget is None:
            raise ValueError("give steps or time_budget (or both)")
        main = self.rank == 0
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / "log.jsonl"
        start = time.perf_counter()
        last_ckpt = last_log = start  # train_seconds is accounted up to last_ckpt
        loss_sum, loss_n, step0 = 0.0, 0, self.step
        by_time = steps is None
        bar = tqdm(
            total=int(time_budget) if by_time else steps,
            initial=0 if by_time else self.step,
            unit="s" if by_time else "step",
            disable=not self.progress,
            dynamic_ncols=True,
            desc="train",
            bar_format="{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]" if by_time else None,
        )
        received: list[int] = []  # SIGINT / SIGTERM, acted on at the next step boundary
        restore = _stop_on_signals(received)
        interrupted = False
        try:
            while steps is None or self.step < steps:
                now = time.perf_counter()
                out_of_time = time_budget is not None and now - start >= time_budget
                stop, checkpoint, interrupted = self._agree(
                    out_of_time, now - last_ckpt >= self.checkpoint_every, bool(received)
                )
                if stop:
                    break
                if checkpoint and self.step > step0:
                    self.train_seconds += now - last_ckpt
                    self.save()
                    last_ckpt = time.perf_counter()  # checkpoint I/O is not training time
                value = self.train_step()
                loss_sum, loss_n, self.last_loss = loss_sum + value, loss_n + 1, value
                now = time.perf_counter()
                if by_time:
                    bar.n = min(int(now - start), int(time_budget))
                    bar.refresh() if loss_n % 10 == 0 else None
                else:
                    bar.update(1)
                if main and self.step % self.log_every == 0:
                    self._log(
                        log_path,
                        loss_sum / loss_n,
                        self.train_seconds + now - last_ckpt,
                        loss_n / max(now - last_log, 1e-9),
                        bar,
                    )
                    loss_sum, loss_n, last_log = 0.0, 0, now
                if main and self.sample_every and self.step % self.sample_every == 0:
                    self.write_samples()
        finally:
            restore()
            bar.close()
            self.close_stream()
        if interrupted:
            log.warning("stopped by a signal at step %d; saving a checkpoint", self.step)
        now = time.perf_counter()
        if main and loss_n:
            self._log(
                log_path,
                loss_sum / loss_n,
                self.train_seconds + now - last_ckpt,
                loss_n / max(now - last_log, 1e-9),
                bar,
            )
        self.train_seconds += now - last_ckpt
        self.save()
        if main:
            self.write_samples()
        if self.writer is not None:
            self.writer.close()  # a later fit() of this trainer opens a new event file
        distributed.barrier()
        summary = {
            "step": self.step,
            "steps_this_run": self.step - step0,
            "train_seconds": self.train_seconds,
            "last_loss": self.last_loss,
            "interrupted": interrupted,
            "signal": signal.Signals(received[0]).name if received else ("elsewhere" if interrupted else None),
            "out_dir": str(self.out_dir),
            "processes": self.world,
        }
        log.info("trained to step %d (%.1f s)", self.step, self.train_seconds)
        return summary
