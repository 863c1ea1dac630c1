"""The per-child step-down history behind LU-9 and NS-10: keys, round trip through its topic form."""

from __future__ import annotations

import gc

from aiokafka.structs import ConsumerRecord

from router._history import ChildHistory
from tests.council_data import step_down, step_up, transfer


def _records(pairs: list[tuple[bytes, bytes | None]]) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord("h", 0, i, 0, 0, k, v, None, len(k), len(v or b""), []) for i, (k, v) in enumerate(pairs)]


def test_lu09_history_is_found_by_any_identifier_and_survives_its_topic_form() -> None:
    """LU-9: remembered under each identifier; a step-up from another system finds it; rebuilt from the topic."""
    down = transfer(step_down("luton", 1))
    history = ChildHistory()
    written = history.remember(down)
    assert [b"mailbox:MAILBOX-1"] == [k for k, _ in written]
    up = step_up("luton", 2)
    up["child"]["identifiers"].append({"system": "mailbox", "id": "MAILBOX-1"})
    rebuilt = ChildHistory()
    rebuilt.apply(_records(list(written)))
    [memory] = rebuilt.lookup(transfer(up))
    assert ("luton-sd-1", "Family Safeguarding Team", "Riley Notreal") == (
        memory.transfer_id,
        memory.team,
        memory.social_worker,
    )
    assert () == rebuilt.lookup(transfer(step_up("luton", 3)))


def test_ns10_same_step_down_twice_is_remembered_once_and_a_tombstone_forgets() -> None:
    """NS-10: replaying a step-down does not duplicate it; a tombstone removes the child's history."""
    down = transfer(step_down("north-somerset", 1))
    history = ChildHistory()
    history.remember(down)
    written = history.remember(down)
    assert 1 == len(history.lookup(down))
    history.apply(_records([(written[0][0], None)]))
    assert () == history.lookup(down)


def test_history_entries_leave_the_collectors_scans_once_collected_remembered_and_rebuilt_alike() -> None:
    """A year of step-downs must not lengthen full collections: once collected, no entry is scanned again."""
    history = ChildHistory()
    written = [kv for n in range(1, 4) for kv in history.remember(transfer(step_down("luton", n)))]
    rebuilt = ChildHistory()
    rebuilt.apply(_records(written))
    gc.collect()
    gc.collect()  # a tuple is left out once what it holds is: the inner tuples first, the outer next pass
    for h in (history, rebuilt):
        assert h.by_key
        assert not any(gc.is_tracked(entries) for entries in h.by_key.values())
        assert not any(gc.is_tracked(e) for entries in h.by_key.values() for e in entries)
    assert [m.transfer_id for m in rebuilt.lookup(transfer(step_down("luton", 1)))] == ["luton-sd-1"]
