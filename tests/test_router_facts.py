"""What the flow asks the case systems before it decides: only the facts the council's protocol uses.

NS-2 routes a North Somerset step-down by whether the locality's Support Leader is away, a fact
only the target knows. No other protocol uses it, and a transfer that fails the protocol is
never routed, so for those the target is not asked (with the EHM connector, one HTTP request to
the staff directory a transfer fewer).
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiokafka.structs import ConsumerRecord

from connectors.memory import MemorySource, MemoryTarget
from contracts import CaseSystem, TransferMessage
from mappings import Route, load_protocols
from router.flow import TransferFlow
from router.settings import RetrySettings
from tests.support import example, ns_transfer


class _AskedTarget(MemoryTarget):
    """The memory EHM, counting the ``leader_away`` questions and remembering each route it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []
        self.routes: list[Route] = []

    async def leader_away(self, locality: str) -> bool | None:
        self.asked.append(locality)
        return await super().leader_away(locality)

    async def deliver(self, transfer: TransferMessage, route: Route) -> Any:
        self.routes.append(route)
        return await super().deliver(transfer, route)


class _Sink:
    def __init__(self) -> None:
        self.types: list[str] = []

    async def emit(self, event: Any) -> None:
        self.types.append(event.event_type)

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.types.append(event_type)

    async def dead_letter(self, record: Any, failure: Any) -> None:
        self.types.append("dead-letter")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        return None


async def _run(doc: dict[str, Any], target: _AskedTarget) -> tuple[str, list[str]]:
    flow = TransferFlow(
        load_protocols(), {CaseSystem.EHM: target}, {CaseSystem.LCS: MemorySource()}, RetrySettings(), "g"
    )
    raw = TransferMessage.model_validate(doc).model_dump_json().encode()
    record = ConsumerRecord("t", 0, 0, 0, 0, b"k", raw, None, 1, len(raw), [])
    sink = _Sink()
    outcome = await flow.run(record, sink)  # type: ignore[arg-type]
    return outcome.state, sink.types


async def test_ns02_the_target_is_asked_who_is_away_and_the_route_follows_it() -> None:
    """NS-2: the North Somerset step-down asks once for its locality; an away leader routes to the team manager."""
    doc = ns_transfer(1)
    locality = doc["child"]["locality"]
    target = _AskedTarget()
    target.away.add(locality)
    state, _ = await _run(doc, target)
    assert ("completed", [locality]) == (state, target.asked)
    assert ("team-manager", ["NS-2"]) == (target.routes[0].role, target.routes[0].rule_ids[:1])


async def test_a_protocol_without_locality_routing_never_asks_who_is_away() -> None:
    """Swindon 2026's step-down to EHM completes without the leader_away question (no rule of its uses it)."""
    target = _AskedTarget()
    state, _ = await _run(example("swindon-2026.step-down.lcs-ehm.json"), target)
    assert ("completed", []) == (state, target.asked)


async def test_a_held_transfer_asks_the_target_nothing() -> None:
    """A North Somerset step-down without consent is held (G1): neither asked who is away nor delivered."""
    doc = ns_transfer(2)
    doc["consent"] = None
    target = _AskedTarget()
    state, events = await _run(doc, target)
    assert ("held", [], 0) == (state, target.asked, target.deliveries)
    assert "held" in events and "delivered" not in events


async def test_ba05_the_protocol_holds_a_transfer_even_where_no_connector_serves_it() -> None:
    """A Barnsley "monitoring" step-down in a flow with no TED or mailbox connector is held with BA-5 (the
    rule), not dead-lettered for the missing connector; a good one names what is missing, by a public name."""
    flow = TransferFlow(load_protocols(), {}, {}, RetrySettings(), "g")

    class Sink(_Sink):
        failures: ClassVar[list[Any]] = []

        async def dead_letter(self, record: Any, failure: Any) -> None:
            self.failures.append(failure)
            await super().dead_letter(record, failure)

    async def run(doc: dict[str, Any]) -> tuple[str, list[str], str | None, list[str]]:
        raw = TransferMessage.model_validate(doc).model_dump_json().encode()
        record = ConsumerRecord("t", 0, 0, 0, 0, b"k", raw, None, 1, len(raw), [])
        sink = Sink()
        outcome = await flow.run(record, sink)  # type: ignore[arg-type]
        return outcome.state, outcome.rule_ids, sink.failures[-1].error_class, sink.types

    monitoring = example("barnsley.step-down.ted-eh-mailbox.json", purpose="monitoring")
    monitoring.pop("purpose_code", None)
    assert ("held", ["BA-5"], "ProtocolRuleNotMet") == (await run(monitoring))[:3]
    state, _, error_class, events = await run(example("barnsley.step-down.ted-eh-mailbox.json"))
    assert ("dead-lettered", "NoConnector") == (state, error_class)
    assert "delivered" not in events and "dead-letter" in events
