"""``python -m monitor.asyncapi``: write contracts/asyncapi.json from the contracts."""

import sys

from ._asyncapi import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
