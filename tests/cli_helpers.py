"""Helpers of the tests that run the ``kuosan`` command as a user would."""

import contextlib
import io
import logging
import subprocess
import sys


def kuosan(*args, check=True, process=False):
    """Run the command line ``kuosan ARGS``: by default in this process through
    :func:`kuosan.cli.main`, the function the installed ``kuosan`` script calls, with stdout and stderr
    captured (no interpreter start-up, no second import of torch); with ``process=True`` as
    ``python -m kuosan ARGS`` in a fresh process. Returns a CompletedProcess either way; raises with
    its stderr if it fails and ``check``."""
    argv = [str(a) for a in args]
    if process:
        r = subprocess.run([sys.executable, "-m", "kuosan", *argv], capture_output=True, text=True)
    else:
        r = _in_process(argv)
    if check and r.returncode != 0:
        raise AssertionError(f"kuosan {' '.join(argv)} failed:\n{r.stderr}")
    return r


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    from kuosan.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []  # main's logging.basicConfig then writes to the captured stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        root.handlers, root.level = handlers, level
    return subprocess.CompletedProcess(["kuosan", *argv], code, out.getvalue(), err.getvalue())


def fails_cleanly(r, *needles) -> str:
    """The command failed as bad input must: exit status 2 and one line on stderr naming the problem
    (containing every needle). Returns that line."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kuosan"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
