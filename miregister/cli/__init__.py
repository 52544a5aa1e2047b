"""The ``miregister`` command line: ``register``, ``apply`` and ``mi``.

One module per sub-command (``*_cmd.py``), each with ``add_parser(commands)`` and
``run(args) -> int``; this module only assembles the parser and maps errors to exit codes:
0 success; 1 bad input or a registration that cannot proceed (the message names the problem,
nothing is written); 2 a malformed command line (argparse's convention).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import apply_cmd, cohort_cmd, mi_cmd, register_cmd
from .common import CONVENTIONS, EXIT_INPUT, EXIT_OK, EXIT_USAGE

__all__ = ["main", "EXIT_OK", "EXIT_INPUT", "EXIT_USAGE"]

_COMMANDS = (register_cmd, apply_cmd, mi_cmd, cohort_cmd)


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
    """Run the command line; returns the exit code (0, 1 or 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"miregister {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
