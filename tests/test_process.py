"""After start-up, `casebridge run` takes its start-up objects out of the collector's scans (docs/benchmark.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_PROBE = textwrap.dedent(
    """
    import gc, weakref
    from casebridge.process import freeze_startup_heap

    class Node:
        pass

    garbage = Node()
    garbage.self = garbage  # a reference cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    live = Node()
    gc.disable()  # nothing may collect the cycle but freeze_startup_heap itself
    freeze_startup_heap()
    assert gone() is None, "garbage from start-up was frozen, not collected"
    assert gc.get_freeze_count() > 0
    assert not any(o is live for o in gc.get_objects()), "a start-up object is still scanned"
    later = Node()
    assert any(o is later for o in gc.get_objects()), "an object made after start-up is not scanned"
    print("ok")
    """
)


def test_start_up_garbage_is_collected_and_live_start_up_objects_are_never_scanned_again() -> None:
    """Run in a process of its own: freezing the test process's heap would keep every later test's garbage."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
