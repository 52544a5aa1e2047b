"""What every ``miregister`` command shares: exit codes, the conventions epilog, argument types."""
from __future__ import annotations

import argparse

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as shells report it
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15

CONVENTIONS = """\
conventions:
  Physical space in millimetres, ITK/LPS, as SimpleITK reads the files (spacing, origin and
  direction of every image are honoured). A transform maps points of the FIXED image's space
  to the MOVING image's space (the ITK convention): warped(x) = moving(T(x)) on the fixed grid.
  Transforms are written as ITK files that SimpleITK (sitk.ReadTransform) and ANTs apply to the
  same effect. Mutual information is reported in nats.

exit codes:
  0    success
  1    bad input data, an output that cannot be written, or a failed registration
       (the message names the file and the problem; no output is changed)
  2    bad command line: unknown option, or a value out of range (checked before any
       image is read)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): partial outputs are removed
"""


def add_command(commands, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command parser with the conventions epilog and no abbreviated options.

    The parser is kept in the parsed arguments (``args.command_parser``) so that a value
    found out of range after parsing is reported with this command's usage line, as
    argparse reports its own errors."""
    parser = commands.add_parser(
        name, help=help, epilog=CONVENTIONS, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.set_defaults(command_parser=parser)
    return parser


def int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (else exit 2 naming the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value
    return parse
