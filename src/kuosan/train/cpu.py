"""The trainer's CPU speed-ups, in one place behind one switch (``train.cpu_tweaks``, on by default):
torch's fused AdamW fed dense views of channels-last weights (:class:`AdamW`) and the C library told
to keep the memory freed tensors give back (:func:`retain_freed_memory`). Neither changes a number
the trainer computes; with the switch off the trainer runs torch's own fused AdamW and the C
library's default allocator settings. The kernels of the networks' operations are ``kuosan.ops``'s
(``KUOSAN_FUSED=0`` switches them off).
"""

from __future__ import annotations

import torch


def _channels_last_only(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW``, the same update and state (checkpoints load either way), with one
    difference in how the fused kernel is called: it works on contiguous tensors and copies any
    other tensor in and out, so a network in channels-last memory (the trainer's default) would
    pay four copies of every convolution weight, gradient and moment per step. The update is
    elementwise, so it may run on any common reordering of a parameter's four tensors: for a
    channels-last weight (O, I, kH, kW) they are handed over as their (O, kH, kW, I) permutations,
    which are contiguous views of the same memory. 6.5M-parameter U-Net, 2 threads: 7.9-8.1 ms
    -> 5.1-6.1 ms a step, bitwise the same parameters."""

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
        out = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        if group["fused"]:
            lists = (params, grads, exp_avgs, exp_avg_sqs) + ((max_exp_avg_sqs,) if group["amsgrad"] else ())
            for i, p in enumerate(params):
                if _channels_last_only(p):  # the same permutation for all of its tensors
                    for tensors in lists:
                        tensors[i] = tensors[i].permute(0, 2, 3, 1)
        return out


def retain_freed_memory() -> bool:
    """Have the C library keep the memory that freed tensors give back, for the next step to reuse.

    By default glibc serves large blocks (from 128 KiB, a threshold it raises as it goes) with fresh
    ``mmap`` pages and returns the top of its heap to the system once 2x that threshold is free.
    A training step frees all of its activations at the end of the backward pass, so the next step
    faults the same memory in again: 4,500-12,000 page faults a step for the 32x32 U-Net of
    docs/speed.md, about 5% of its time. With blocks up to 32 MiB (glibc's largest) taken from the
    heap and the heap never trimmed below 2 GiB of free space, the steady state has a few hundred.
    The process keeps its peak footprint, as a GPU caching allocator does. Process-wide; returns
    False (and changes nothing) where the C library has no ``mallopt`` (e.g. macOS, musl)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def make_optimizer(params, *, cpu_tweaks: bool = True, **kwargs) -> torch.optim.AdamW:
    """AdamW over ``params`` (``kwargs``: lr, betas, weight_decay, fused, ...): :class:`AdamW` with
    ``cpu_tweaks``, else ``torch.optim.AdamW``; the same update either way."""
    return (AdamW if cpu_tweaks else torch.optim.AdamW)(params, **kwargs)


__all__ = ["AdamW", "make_optimizer", "retain_freed_memory"]
