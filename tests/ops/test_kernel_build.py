"""The CPU kernels build wherever a C++ compiler and ninja are present, on any x86-64 CPU: the AVX-512
and AMX code sits behind the compiler's feature macros, so an AVX2-only machine gets the kernels too.
(tests/ops/test_cpu_kernels.py skips itself when the kernels cannot build; without this test a build error on
some CPU would pass unseen.)"""

import platform
import shutil

import pytest
from torch.utils.cpp_extension import is_ninja_available

from kuosan.ops import cpu


@pytest.mark.skipif(not (shutil.which("c++") and is_ninja_available()), reason="no C++ compiler or ninja")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the kernels are written for x86-64")
def test_kernels_build_here():
    assert cpu.extension() is not None, "the CPU kernels failed to build (the warning says why)"


@pytest.mark.skipif(not (shutil.which("c++") and is_ninja_available()), reason="no C++ compiler or ninja")
def test_a_build_killed_midway_does_not_block_the_next():
    """A process killed while it built the kernels leaves torch's lock file in the build folder; the
    next process still gets the kernels (it used to wait on that file forever)."""
    import subprocess
    import sys
    from pathlib import Path

    from torch.utils.cpp_extension import _get_build_directory

    cpu.extension()  # built (or cached) here first
    folder = Path(_get_build_directory(f"kuosan_kernels_{cpu.build_key()}", verbose=False))
    (folder / "lock").write_text("")  # what a kill -9 mid-build leaves
    code = "from kuosan.ops import cpu; assert cpu.extension() is not None; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert not (folder / "lock").exists()
