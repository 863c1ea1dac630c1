"""Names of a package imported when first used (PEP 562), for the packages whose ``__init__`` re-exports them.

An operator's command (``casebridge dlq list``) imports a few modules of ``router``, ``connectors``, ``contracts``
and ``monitor``; re-exporting every public name eagerly would build every event model and import the router's
Kafka wiring (FastStream) and the web application first, most of a second on every call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``where`` maps each public name to the submodule defining it
    (relative, ``"._events"``); a name is imported on first use and kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
