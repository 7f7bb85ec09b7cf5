"""Helpers of the tests that run the ``kuosan`` command as a user would."""

import subprocess
import sys


def kuosan(*args, check=True):
    """Run ``python -m kuosan ARGS``; raise with its stderr if it fails and ``check``."""
    r = subprocess.run([sys.executable, "-m", "kuosan", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"kuosan {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


def fails_cleanly(r, *needles) -> str:
    """The command failed as bad input must: exit status 2 and one line on stderr naming the problem
    (containing every needle). Returns that line."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kuosan"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
