"""The ``miregister`` command line: ``register``, ``apply`` and ``mi``.

One module per sub-command (``*_cmd.py``), each with ``add_parser(commands)`` and
``run(args) -> int``; this module only assembles the parser and maps errors to exit codes:
0 success; 1 bad input, an unwritable output or a registration that cannot proceed (the
message names the problem, no output is changed); 2 a malformed command line or an option
value out of range (argparse's convention, checked before any image is read); 130 interrupted
(SIGINT), 143 terminated (SIGTERM), with partial outputs removed.
"""
from __future__ import annotations

from ..threads import set_openmp_defaults

set_openmp_defaults()  # first, before torch loads OpenMP: idle threads then sleep instead of spinning

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator, Sequence

from ..errors import MiregisterError, UsageError
from . import apply_cmd, cohort_cmd, mi_cmd, register_cmd
from .common import CONVENTIONS, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE

__all__ = ["main", "console_main", "EXIT_OK", "EXIT_INPUT", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

_COMMANDS = (register_cmd, apply_cmd, mi_cmd, cohort_cmd)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-ups (``finally``) run. A BaseException,
    like KeyboardInterrupt, so that ``except Exception`` does not swallow it."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miregister",
        description="Image registration driven by mutual information (PyTorch, CPU or CUDA).",
        epilog=CONVENTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"miregister {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 1, 2, 130 or 143)."""
    parser = _build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # with the sub-command's usage line, not the top parser's
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_:  # argparse: 2 after printing usage and error; 0 for --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    name = f"miregister {args.command}"
    with _sigterm_raises():
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Terminated:
            print(f"{name}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except UsageError as error:
            args.command_parser.print_usage(sys.stderr)
            print(f"{name}: error: {_usage_message(args.command_parser, error)}", file=sys.stderr)
            return EXIT_USAGE
        except (MiregisterError, ValueError, TypeError, OSError, RuntimeError) as error:
            print(f"{name}: error: {error}", file=sys.stderr)
            return EXIT_INPUT


#: Sub-commands that may leave the interpreter without its teardown (see :func:`console_main`);
#: ``cohort`` is not among them: Dask's clusters and workers clean up at exit.
_FAST_EXIT = frozenset({"register", "apply", "mi"})


def console_main() -> None:
    """The ``miregister`` console script (and ``python -m miregister``): :func:`main`, then exit.

    After ``register``, ``apply`` or ``mi`` has written its outputs (each committed atomically)
    and flushed its streams, the process ends with ``os._exit``: the interpreter's normal
    teardown, freeing the modules of torch, SciPy, SimpleITK and matplotlib one by one, costs
    0.4-0.9 s of a few-second run and does nothing for files that are already complete.
    """
    argv = sys.argv[1:]
    code = main(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    if command not in _FAST_EXIT:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to deliver
            code = code or EXIT_INPUT
    os._exit(code)


def _usage_message(parser: argparse.ArgumentParser, error: UsageError) -> str:
    """Name the command-line flag (``argument --iterations: got -5; ...``) where the error
    names a register() keyword that one of the parser's options sets."""
    option, detail = getattr(error, "option", None), getattr(error, "detail", None)
    for action in parser._actions:
        if option is not None and detail is not None and action.dest == option and action.option_strings:
            return f"argument {'/'.join(action.option_strings)}: {detail}"
    return str(error)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While running a command, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":  # pragma: no cover
    console_main()
