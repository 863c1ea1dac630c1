"""The fault suite (issue 19, item 7): North Somerset deployed as a council deploys it (``casebridge run --config``
as a process of its own, on the LCS and EHM sandboxes and the session's broker, at DEBUG), a fault, and then, counted
from outside: every step-down in EHM's tray once, its LCS record closed once, one ``delivered`` event id, nothing of
it dead-lettered; the process alive or ended with its documented exit code; the log bounded, with no traceback and
none of the children's personal data. Each fault prints its figures (``pytest -s`` shows them; ``-rA`` too).

The broker's own outages and the monitor's storage faults are tests of their own (tests/test_faults_broker.py,
tests/test_monitor_faults.py). ``FAULTS_N`` sets the number of step-downs per fault (default 60; the long form, e.g.
``FAULTS_N=200``), ``FAULTS_FUZZ`` the size of the fuzz corpus (at least and by default 1,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import CommitFailedError

from contracts import CaseSystem
from router import Settings, Topics
from router.app import ensure_topics
from router.lifecycle import Lifecycle
from tests.faults_support import (
    EHM_DEADLINE,
    Council,
    Tally,
    Topic,
    assert_every_transfer_once,
    assert_log_bounded,
    council,
    figures,
    fuzz_base,
    fuzz_corpus,
    group_members,
    leaks,
    tally,
    until_closed,
    until_members,
    until_tray,
)

N = int(os.environ.get("FAULTS_N", "60"))
FUZZ = max(1000, int(os.environ.get("FAULTS_FUZZ", "1000")))


async def _finish(c: Council, fault: str, recovered: float | None, transfers: int, **extra: object) -> Tally:
    """After a fault: the tally (printed as the fault's figures), every step-down once, the run alive and ended by
    SIGTERM with 0, the log bounded and free of personal data."""
    events, dead = Topic(c.bootstrap, Topics(c.prefix).events), Topic(c.bootstrap, Topics(c.prefix).dead_letter)
    try:
        t = await tally(c, events, dead)
    finally:
        await events.stop()
        await dead.stop()
    alive = c.alive()
    code = c.stop() if alive else c.process.returncode
    again = {"published_again": t.published_again, "delivered_events_read_again": t.redelivered_records}
    figures(fault, c, t, recovered, exits=c.exits, **again, **extra).show()
    assert (True, 0) == (alive, code), c.log_text()[-3000:]
    assert_every_transfer_once(c, t)
    assert_log_bounded(c, transfers)
    assert [] == leaks(c.log_text(), [ch.personal for ch in c.children])
    return t


async def test_router_sigkilled_three_times_mid_flow_loses_nothing_and_delivers_nothing_twice(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """``casebridge run`` SIGKILLed three times while N step-downs flow, restarted each time (as a supervisor
    does): each resumes from its committed offsets and LCS cursor; 0 lost, 0 delivered twice."""
    async with council(tmp_path, kafka_bootstrap, topic_prefix, batch_size=5, start=False) as c:
        c.step_down(N)
        c.start()
        for k in range(1, 4):
            await until_tray(c, more_than=k * N // 5)
            c.kill()
            c.start()
        killed_at = time.monotonic()
        events = Topic(kafka_bootstrap, Topics(topic_prefix).events)
        try:
            await until_closed(c, events, timeout=180 + N)
        finally:
            await events.stop()
        recovered = time.monotonic() - killed_at
        assert [-9, -9, -9] == c.exits  # the kills (SIGKILL), nothing else ended a run
        await _finish(c, "router SIGKILLed x3", recovered, N, step_downs=N)


async def test_router_paused_past_its_session_timeout_and_resumed_loses_nothing_and_delivers_nothing_twice(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """``casebridge run`` stopped (SIGSTOP) for longer than its consumer's 10 s session timeout mid-flow, so the
    group evicts it, then continued (SIGCONT): it rejoins, the batch it held is read again, 0 lost, 0 twice."""
    async with council(tmp_path, kafka_bootstrap, topic_prefix, batch_size=5, start=False) as c:
        c.step_down(N)
        c.start()
        group = f"{topic_prefix}-router"
        before = await until_members(kafka_bootstrap, group)
        await until_tray(c, more_than=N // 4)
        c.pause()
        await asyncio.sleep(16)  # past session.timeout.ms (10 s): the broker drops the member
        evicted = await group_members(kafka_bootstrap, group)
        c.resume()
        resumed_at = time.monotonic()
        events = Topic(kafka_bootstrap, Topics(topic_prefix).events)
        try:
            await until_closed(c, events, timeout=180 + N)
        finally:
            await events.stop()
        recovered = time.monotonic() - resumed_at
        after = await until_members(kafka_bootstrap, group)
        assert before and not (before & evicted)  # the pause did evict it: the fault happened
        assert after and not (after & before)  # and it came back as a new member
        await _finish(c, "router SIGSTOP 16 s", recovered, N, step_downs=N)


async def _target_fault(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, mode: str) -> None:
    """EHM behind a proxy that, mid-flow, hangs / refuses / answers 503 for ``seconds`` (longer if the fault has not
    been met by then, at most ``longest``); then EHM is back."""
    # a hang outlasts a call's total deadline, so calls end at their deadline, not when the proxy lets go; every
    # fault stays under what the retry tiers wait (3 + 6 + 12 s, each try of a hung call 10 s more), so what it
    # catches waits in the tiers and is never dead-lettered
    seconds, longest = (EHM_DEADLINE + 2.0, EHM_DEADLINE + 10.0) if mode == "hang" else (6.0, 14.0)
    async with council(tmp_path, kafka_bootstrap, topic_prefix, ehm_proxy=True, batch_size=5, start=False) as c:
        proxy = c.proxy
        assert proxy is not None
        n = max(20, N // 3)
        c.step_down(n // 2)
        c.start()
        group = f"{topic_prefix}-router"
        await until_tray(c, more_than=0)
        before = await until_members(kafka_bootstrap, group)
        events = Topic(kafka_bootstrap, Topics(topic_prefix).events)

        async def retried() -> set[bytes | None]:
            return {r.key for r in await events.poll(0.2) if dict(r.headers).get("event_type") == b"retry-scheduled"}

        async def met() -> bool:
            if mode == "hang":
                return bool(proxy.held)  # a caller gave up on a hung call
            return (proxy.accepted[mode] > 0 or mode == "refuse") and bool(await retried())

        try:
            proxy.set(mode)
            began = time.monotonic()
            c.step_down(n - n // 2)  # published while EHM is down
            while time.monotonic() - began < longest:
                if time.monotonic() - began >= seconds and await met():
                    break
                await asyncio.sleep(0.2)
                assert c.alive(), c.log_text()[-3000:]
            lasted = time.monotonic() - began
            proxy.set("pass")
            back = time.monotonic()
            await until_closed(c, events, timeout=120)
            caught = await retried()
        finally:
            await events.stop()
        recovered = time.monotonic() - back
        after = await until_members(kafka_bootstrap, group)
        hits = proxy.accepted[mode]
        held = max(proxy.held + proxy.cut, default=0.0)
        await _finish(c, f"EHM {mode} {lasted:.0f} s", recovered, n, step_downs=n, calls_faulted=hits,
                      transfers_retried=len(caught), longest_hung_call=round(held, 2),
                      hung_calls_given_up=len(proxy.held), hung_calls_cut_by_recovery=len(proxy.cut))  # fmt: skip
        assert (hits > 0 or mode == "refuse") and caught  # the fault was met (a refused connection is never
        # accepted), and the retry tiers carried what it caught
        assert before == after  # the consumer was never evicted from its group
        if mode == "hang":
            # calls gave up at their total deadline (httpx's per-read timeout alone would wait forever on a hang), and
            # none outlived it, those the recovery cut included
            assert proxy.held and held <= EHM_DEADLINE + 2.0


async def test_ehm_that_hangs_each_call_bounded_by_its_deadline_then_delivered_once_back(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """EHM accepts and never answers for 12 s: each call ends at EHM's total deadline, the transfers go through the
    retry tiers, the consumer stays in its group, and every one is delivered once EHM answers again."""
    await _target_fault(kafka_bootstrap, topic_prefix, tmp_path, "hang")


async def test_ehm_refusing_connections_then_back_every_transfer_delivered_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Nothing listens at EHM's address for 6 s: the transfers wait in the retry tiers and are delivered once."""
    await _target_fault(kafka_bootstrap, topic_prefix, tmp_path, "refuse")


async def test_ehm_answering_503_then_recovering_every_transfer_delivered_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """EHM answers 503 for 6 s: the transfers wait in the retry tiers and are delivered once it recovers."""
    await _target_fault(kafka_bootstrap, topic_prefix, tmp_path, "503")


async def test_an_oversized_record_is_dead_lettered_by_reference_and_the_transfers_after_it_delivered(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A 1.5 MiB transfer produced raw onto the transfers topic (whose limit allows it) is dead-lettered by
    reference (no value; where it is, its size, why); ``casebridge run`` goes on and delivers the step-downs
    published after it."""
    topics = Topics(topic_prefix)
    async with council(tmp_path, kafka_bootstrap, topic_prefix) as c:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            limit = {"max.message.bytes": str(4 * 1024 * 1024)}
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.transfers, configs=limit)])
        finally:
            await admin.close()
        huge, personal = fuzz_base(0)
        huge["documents"][0]["content"] = "x" * 1_572_864
        value = json.dumps(huge).encode()
        key = f"lcs:{huge['child']['identifiers'][0]['id']}".encode()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            sent = await producer.send_and_wait(topics.transfers, value, key=key)
        finally:
            await producer.stop()
        produced_at = time.monotonic()
        c.step_down(max(10, N // 6))
        events = Topic(kafka_bootstrap, topics.events)
        try:
            await until_closed(c, events, timeout=120)
        finally:
            await events.stop()
        recovered = time.monotonic() - produced_at
        t = await _finish(c, "oversized record 1.5 MiB", recovered, len(c.children) + 1, size=len(value))
    assert [] == leaks(c.log_text(), [personal])
    [dead] = t.dead
    assert ("true", "fuzz-0", "validate") == (
        dead["casebridge.dlq.by.reference"],
        dead["casebridge.dlq.transfer.id"],
        dead["casebridge.dlq.stage"],
    )
    assert (topics.transfers, str(sent.partition), str(sent.offset)) == (
        dead["casebridge.dlq.original.topic"],
        dead["casebridge.dlq.original.partition"],
        dead["casebridge.dlq.original.offset"],
    )
    assert int(dead["casebridge.dlq.original.size"]) > len(value)


async def test_a_fuzz_corpus_of_1000_mutated_transfers_each_dead_lettered_once_and_every_valid_one_delivered(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """At least 1,000 mutated transfer messages (truncated, wrong types, missing fields, deep nesting, invalid UTF-8,
    huge strings, wrong or no keys, null bytes, numbers as strings, extra fields...; seeded, so the same every run)
    produced raw, interleaved with real step-downs: each mutant in the dead-letter topic exactly once with its reason,
    each step-down delivered once, ``casebridge run`` alive throughout and no traceback in its output."""
    topics = Topics(topic_prefix)
    corpus, drawn = fuzz_corpus(FUZZ)
    rounds = 10
    async with council(tmp_path, kafka_bootstrap, topic_prefix) as c:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        where: dict[tuple[int, int], int] = {}
        try:
            for r in range(rounds):
                chunk = corpus[r * len(corpus) // rounds : (r + 1) * len(corpus) // rounds]
                start = r * len(corpus) // rounds
                futures = [await producer.send(topics.transfers, m.value, key=m.key) for m in chunk]
                for i, meta in enumerate(await asyncio.gather(*futures)):
                    where[(meta.partition, meta.offset)] = start + i
                c.step_down(max(3, N // rounds))
                assert c.alive(), c.log_text()[-3000:]
        finally:
            await producer.stop()
        injected = time.monotonic()
        events, dead = Topic(kafka_bootstrap, topics.events), Topic(kafka_bootstrap, topics.dead_letter)
        try:
            await until_closed(c, events, timeout=180 + N)
            deadline = time.monotonic() + 120
            while len(await dead.poll(0.5)) < len(corpus) and time.monotonic() < deadline:
                assert c.alive(), c.log_text()[-3000:]
        finally:
            await events.stop()
            await dead.stop()
        recovered = time.monotonic() - injected
        t = await _finish(c, f"fuzz corpus {len(corpus)}", recovered, len(c.children) + len(corpus),
                          mutants=len(corpus), mutations_drawn=drawn, step_downs=len(c.children))  # fmt: skip
    assert [] == leaks(c.log_text(), [m.personal for m in corpus])
    letters = [d for d in t.dead if d.get("casebridge.dlq.original.topic") == topics.transfers]
    found = sorted(
        where.get((int(d["casebridge.dlq.original.partition"]), int(d["casebridge.dlq.original.offset"])), -1)
        for d in letters
    )
    assert list(range(len(corpus))) == found  # each mutant once, nothing else
    assert len(t.dead) == len(letters)
    reasons = {(d["casebridge.dlq.stage"], d["casebridge.dlq.error.class"]) for d in letters}
    assert {"validate"} == {stage for stage, _ in reasons}
    assert {"ContractViolation", "MalformedJson", "MissingKey", "KeyMismatch"} >= {cls for _, cls in reasons}
    assert all(d["casebridge.dlq.error.message"] for d in letters)
    reasons_text = "\n".join(d["casebridge.dlq.error.message"] for d in letters)  # shown by dlq list, the monitor
    assert [] == leaks(reasons_text, [m.personal for m in corpus])


def test_an_unknown_key_is_named_only_when_spelled_as_a_field_name() -> None:
    """A refused message's field locations (logged, in the dead letter's reason, on the rejected event) never echo
    a key that could be personal data (a name, an NHS number, a postcode): a key spelled as a field name (a typo,
    another schema version's field) is still named."""
    from pydantic import ValidationError

    from contracts import TransferMessage, field_errors
    from tests.support import example

    doc = example()
    doc["child"].update({"9990000220": True, "Fuzzina7 Corpusdale-7": True, "BS1 9ZZ": True, "nick_name": True})
    try:
        TransferMessage.model_validate(doc)
    except ValidationError as exc:
        fields = sorted(e.field for e in field_errors(exc))
    assert ["child.(unknown field)"] * 3 + ["child.nick_name"] == fields


def test_the_log_scan_finds_each_form_of_a_childs_personal_data() -> None:
    """The scan the faults end with is not blind: each form (names, date of birth, the NHS number plain, spaced,
    dashed and prefixed, the UPN, the postcode in any case) is found in a line, and a redacted line is clean."""
    person = {"given_name": "Fuzzina7", "family_name": "Corpusdale-7", "date_of_birth": "2013-08-27",
              "nhs_number": "9990000220", "upn": "Z000000000200", "postcode": "BS1 9ZZ"}  # fmt: skip
    forms = ["Fuzzina7", "Corpusdale-7", "2013-08-27", "9990000220", "999 000 0220", "999-000-0220", "NHS9990000220",
             "Z000000000200", "BS1 9ZZ", "bs1 9zz", "BS19ZZ"]  # fmt: skip
    for form in forms:
        assert [] != leaks(f'{{"event": "careless", "value": "{form}", "level": "debug"}}', [person]), form
    from casebridge.logs import scrub_text

    assert [] == leaks(scrub_text(f"NHS{person['nhs_number']} at bs1 9zz, 999-000-0220, Z000000000200"), [person])


# -- the side loops a pause evicts: a commit refused after a rebalance is read again, not fatal -----------------


def _refuse_commits(consumer: Any, times: int) -> list[int]:
    """Make ``consumer.commit`` fail as it does once the group rebalanced without it (aiokafka's CommitFailedError),
    ``times`` times; the list counts the refusals."""
    real, refused = consumer.commit, [0]

    async def commit(*args: Any, **kwargs: Any) -> Any:
        if refused[0] < times:
            refused[0] += 1
            raise CommitFailedError("the group rebalanced (this member was evicted)")
        return await real(*args, **kwargs)

    consumer.commit = commit
    return refused


async def test_lu07_the_notices_loop_goes_on_when_a_rebalance_refuses_its_commit_and_sends_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The lifecycle loop's commits refused (evicted from its group): it goes on, the allocation notice goes once."""
    from tests.test_notices_restart import Mailbox, _allocate, _pend

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
    t = settings.topics
    await ensure_topics(
        kafka_bootstrap, [t.events, t.audit], compacted=[t.pending_notices, t.pending_closures, t.history]
    )
    mailbox = Mailbox()
    lifecycle = Lifecycle(settings, {}, {CaseSystem.MAILBOX: mailbox})
    notices = lifecycle.notices
    await lifecycle.start()
    refused = _refuse_commits(lifecycle.consumer, 3)
    try:
        await _pend(settings, "LU7-EVICTED-1")
        await _allocate(settings, "LU7-EVICTED-1")
        sent = 0
        for _ in range(40):
            sent += await notices.poll_once()
        assert (3, 1) == (refused[0], sent)
    finally:
        await lifecycle.stop()
    assert ["LU7-EVICTED-1-notice-allocation"] == mailbox.order


async def test_the_closure_scheduler_goes_on_when_a_rebalance_refuses_its_commit(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The closure scheduler's commit refused (evicted from its group, as casebridge run paused past its session
    timeout is): the poll ends normally and the next commits go through (before: the loop died, exit 4)."""
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, group_id=f"{topic_prefix}-r")
    t = settings.topics
    await ensure_topics(
        kafka_bootstrap, [t.events, t.audit], compacted=[t.pending_notices, t.pending_closures, t.history]
    )
    lifecycle = Lifecycle(settings, {}, {})
    await lifecycle.start()
    refused = _refuse_commits(lifecycle.consumer, 2)
    try:
        assert [0, 0, 0, 0] == [await lifecycle.closures.poll_once() for _ in range(4)]
        assert 2 == refused[0]
    finally:
        await lifecycle.stop()
