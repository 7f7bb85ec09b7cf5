"""kuosan's CPU kernels: C++ (AVX-512 and AMX where the CPU has them) built by
``torch.utils.cpp_extension`` on first use and cached.

The build compiles for the CPU it runs on (``-march=native``), so the cache is keyed by the CPU's
instruction-set features as well as by the sources, headers, flags and install location: one
torch-extensions folder shared by different machines holds one build per CPU kind instead of
handing one machine's binary to another. A build runs under a lock that dies with its process
(:func:`_build_lock`), so a build killed midway never blocks the next. Inside the binary, the AMX
routes are taken only where the operating system grants the tiles (``amx_tiles.h``). Without a
compiler or ninja, on a platform the kernels do not support, or with ``KUOSAN_FUSED=0``,
:func:`available` is False and :mod:`kuosan.ops` runs its PyTorch definitions
(:mod:`kuosan.ops.reference`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
import zlib
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = ("kernels.cpp", "group_norm_act.cpp", "conv_backward.cpp", "conv_weight_grad.cpp", "attention.cpp")
# the norm kernel's AVX-512 loops use 512-bit vectors themselves (intrinsics); the compiler's own
# choice of width stays its default (docs/speed.md)
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
# instruction-set extensions that change what -march=native compiles (Linux /proc/cpuinfo names)
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512cd",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

_EXT = None
_FAILED = False


def cpu_features() -> str:
    """The CPU as the build sees it: architecture, then the ISA extensions it reports (Linux), e.g.
    ``x86_64:avx,avx2,fma,...``; elsewhere the processor's name."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return f"{platform.machine()}:{platform.processor()}"
    return f"{platform.machine()}:" + ",".join(f for f in ISA_FLAGS if f in flags)


def build_key() -> str:
    """Digest of what the binary depends on: CPU features, sources, headers, flags, and where the
    sources are (ninja rebuilds when they move: two installs sharing a cache get a folder each)."""
    parts = [cpu_features().encode(), " ".join(FLAGS).encode(), str(HERE.resolve()).encode()]
    parts += [p.read_bytes() for p in sorted(HERE.glob("*.h"))] + [(HERE / s).read_bytes() for s in SOURCES]
    digest = zlib.crc32(b"|".join(parts))
    return f"{digest:08x}"


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold the build folder's lock for one process at a time, a lock that dies with its process.

    torch's own lock is a file that a build creates and deletes; a process killed mid-build (kill -9,
    the OOM killer) leaves it behind, and every later build then waits on it forever. Under an
    operating-system lock (flock, released when its holder exits however it exits) no other kuosan
    process is building, so a torch lock file found there is stale and is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(build_dir / "kuosan.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def extension():
    """The compiled kernels, or None if they cannot be built here (warns once)."""
    global _EXT, _FAILED
    if _EXT is not None or _FAILED:
        return _EXT
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        name = f"kuosan_kernels_{build_key()}"  # the cache folder: one per CPU kind and source version
        with _build_lock(Path(_get_build_directory(name, verbose=False))):
            _EXT = load(
                name=name,
                sources=[str(HERE / s) for s in SOURCES],
                extra_cflags=list(FLAGS),
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:  # no compiler, no ninja, unsupported platform: the PyTorch definitions serve
        _FAILED = True
        msg = str(exc).strip()
        warnings.warn(
            f"kuosan: CPU kernels unavailable ({type(exc).__name__}: "
            f"{msg.splitlines()[-1] if msg else ''}); using PyTorch ops",
            stacklevel=3,
        )
    return _EXT


def available() -> bool:
    """True if the kernels are built (or build now) and not switched off by ``KUOSAN_FUSED=0``."""
    return os.environ.get("KUOSAN_FUSED", "1") != "0" and extension() is not None
