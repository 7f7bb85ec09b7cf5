"""The ``kuosan`` command line: train, sample, info, eval, nll, reconstruct, txt2img, img2img, inpaint,
sds, dreamfusion, export, plot, show, serve.

A thin layer: :mod:`kuosan.cli.parser` reads the arguments, :mod:`kuosan.cli.commands` calls the
application function of :mod:`kuosan.app` and prints its result; a bad request is one line on stderr
and exit status 2."""

from __future__ import annotations

import logging
import sys

from kuosan.cli.commands import COMMANDS, UserError
from kuosan.cli.parser import OVERRIDE, build_parser

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    from kuosan.config import ConfigError
    from kuosan.data import DataError
    from kuosan.devices import DeviceError
    from kuosan.imaging import ImageReadError
    from kuosan.interop.diffusers import DiffusersError
    from kuosan.train import CheckpointError, TrainingDiverged

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides
    if overrides and args.command != "train":
        parser.error(f"config overrides ({overrides[0]}) are only for `kuosan train`")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except (UserError, ConfigError, DataError, CheckpointError, ImageReadError, DeviceError, DiffusersError) as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system failed under a command (a full disk, a vanished folder)
        detail = e.strerror or str(e)
        print(f"kuosan {args.command}: error: {f'{e.filename}: ' if e.filename else ''}{detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one during any other command
        print(f"kuosan {args.command}: interrupted; nothing more was written", file=sys.stderr)
        return 130


__all__ = ["EXIT_USAGE", "main"]
