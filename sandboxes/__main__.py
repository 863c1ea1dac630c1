"""``python -m sandboxes {lcs,ehm} --db FILE [--token T] [--host H] [--port P]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sandboxes import ehm, lcs


def main(argv: Sequence[str] | None = None) -> None:
    """Run one sandbox in the foreground: the first argument picks lcs or ehm."""
    args = list(sys.argv[1:] if argv is None else argv)
    mains = {"lcs": lcs.main, "ehm": ehm.main}
    if not args or args[0] not in mains:
        sys.exit("usage: python -m sandboxes {lcs,ehm} --db FILE [--token T] [--host H] [--port P]")
    mains[args[0]](args[1:])


if __name__ == "__main__":
    main()
