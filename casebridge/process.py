"""What a long-running casebridge process does once it has started."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then keep every object alive now out of the garbage collector's scans.

    Modules, pydantic schemas, the protocols and the state replayed at start (child history,
    retry state) live as long as the process. Left in the collector's oldest generation, every
    full collection walks them all again with the event loop stopped: about 100 ms on this
    machine (bench/router_vs_pipe.py, docs/benchmark.md), which every transfer in flight
    then waits. Frozen (``gc.freeze``), they are never scanned; what the process allocates
    later is collected as before.
    """
    gc.collect()
    gc.freeze()
