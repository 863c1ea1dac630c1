"""The cheaper paths of the perf branch give exactly what the plain ones gave."""

from __future__ import annotations

import json

import pytest

from bench._workload import Workload
from router import app
from router.flow import peek_transfer_id

_PEEK_CASES: list[bytes | None] = [
    None,
    b"",
    b"not json",
    b"[1, 2]",
    b"17",
    b'"t-1"',
    b"null",
    b"{}",
    b'{"transfer_id": "t-1"}',
    b'  {"transfer_id" : "ns-2026.1:a_b"}  ',
    b'{"transfer_id": "a", "transfer_id": "b"}',
    b'{"x": {"transfer_id": "nested"}}',
    b'{"x": {"transfer_id": "nested"}, "transfer_id": "top"}',
    b'{"transfer_id": 12}',
    b'{"transfer_id": null}',
    b'{"transfer_id": ["t-1"]}',
    b'{"transfer_id": ""}',
    b'{"transfer_id": "' + b"x" * 128 + b'"}',
    b'{"transfer_id": "' + b"x" * 129 + b'"}',
    b'{"transfer_id": "has space"}',
    b'{"transfer_id": "t/1"}',
    b'{"transfer_id": "\\u00e9t\\u00e9"}',
    '{"transfer_id": "été"}'.encode(),
    b'{"transfer_id": "t-1", "n": NaN}',
    b'{"transfer_id": "t-1"',
    b'{"transfer_id": "t-1"} trailing',
    b'\xff\xfe{"transfer_id": "t-1"}',
    b'{"transfer_id": "t-1", "bad": "\xff"}',
]


@pytest.mark.parametrize("raw", _PEEK_CASES)
def test_perf_peek_transfer_id_gives_the_plain_answer(raw: bytes | None) -> None:
    """The router's top-level-only peek returns what json.loads(...).get('transfer_id') gave, for any input."""
    assert app.peek_transfer_id(raw) == peek_transfer_id(raw)


def test_perf_peek_transfer_id_on_whole_transfers() -> None:
    workload = Workload()
    for seq in range(0, 200, 7):
        raw = json.dumps(workload.document(seq)).encode()
        assert app.peek_transfer_id(raw) == peek_transfer_id(raw) is not None
