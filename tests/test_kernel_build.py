"""The CPU kernels build wherever a C++ compiler and ninja are present, on any x86-64 CPU: the AVX-512
and AMX code sits behind the compiler's feature macros, so an AVX2-only machine gets the kernels too.
(tests/test_fused.py skips itself when the kernels cannot build; without this test a build error on
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
