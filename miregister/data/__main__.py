"""``python -m miregister.data [NAME ...]``: print the path of each named sample image, or of all.

For shells: ``miregister register $(python -m miregister.data mni152_t1_2mm) ...``.
"""
from __future__ import annotations

import sys

from . import list as names
from . import path


def main(argv: list[str] | None = None) -> int:
    """Print one path per line; exit 2 (with the known names) for an unknown name."""
    from ..errors import UsageError

    wanted = sys.argv[1:] if argv is None else argv
    try:
        for name in wanted or names():
            print(path(name))
    except UsageError as error:
        print(f"python -m miregister.data: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
