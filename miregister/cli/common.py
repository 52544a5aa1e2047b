"""What every ``miregister`` command shares: exit codes, the conventions epilog, argument types."""
from __future__ import annotations

import argparse

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2

CONVENTIONS = """\
conventions:
  Physical space in millimetres, ITK/LPS, as SimpleITK reads the files (spacing, origin and
  direction of every image are honoured). A transform maps points of the FIXED image's space
  to the MOVING image's space (the ITK convention): warped(x) = moving(T(x)) on the fixed grid.
  Transforms are written as ITK files that SimpleITK (sitk.ReadTransform) and ANTs apply to the
  same effect. Mutual information is reported in nats.

exit codes:
  0 success; 1 bad input or failed registration (nothing is written); 2 bad command line.
"""


def add_command(commands, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command parser with the conventions epilog and no abbreviated options."""
    return commands.add_parser(
        name, help=help, epilog=CONVENTIONS, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
