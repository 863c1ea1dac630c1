"""The fault suite's harness (tests/test_faults.py): North Somerset deployed as a council deploys it (the LCS and
EHM sandboxes, a deployment file, ``casebridge run --config`` as a process of its own, at DEBUG), a fault-injecting
proxy in front of a sandbox, and the tally that says, after a fault, what reached a terminal state and how often.

The tally counts from the outside only: the items in EHM's Step-Down tray, the record closes in LCS's change
feed, the events on ``<prefix>.events`` and the records on ``<prefix>.dlq``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from casebridge.localdeploy import RunningDeployment, Sandboxes, deployment_file, free_port, sandboxes
from casebridge.scenarios import EhmSandboxClient, LcsSandboxClient
from contracts import parse_event

COUNCIL = "north-somerset"
#: quick in-process retries; delayed tiers that outlast the target faults below (3 + 6 + 12 s), so a transfer
#: caught by one is retried until the target is back, not dead-lettered
FAULT_RETRY = {"attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.2, "total_seconds": 2.0,
               "tiers": [3.0, 6.0, 12.0]}  # fmt: skip
#: each call to a case system has this total deadline (connectors/_http.py's default; the deployment file has no
#: setting for it): a hung EHM holds no call longer
EHM_DEADLINE = 10.0
#: synthetic postcodes of the right shape (no real address behind them is meant)
POSTCODES = ("BS1 9ZZ", "BS20 7QQ", "BS48 1XX", "BS21 6YY", "BS49 5WW")


# -- the deployment --------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A synthetic child on LCS with its step-down request: what it is, and the personal data it carries."""

    child_id: str
    transfer_id: str
    personal: dict[str, str]


@dataclass
class Council:
    """North Somerset deployed on its sandboxes, the way a council runs it; every run's output in one log."""

    work: Path
    bootstrap: str
    prefix: str
    systems: Sandboxes
    config: Path
    env: dict[str, str]
    log: Path
    lcs: LcsSandboxClient
    ehm: EhmSandboxClient
    proxy: FaultProxy | None = None
    run: RunningDeployment | None = None
    children: list[Child] = field(default_factory=list)
    #: exit codes of the runs that ended (a SIGKILL is -9)
    exits: list[int] = field(default_factory=list)

    def start(self) -> RunningDeployment:
        self.run = RunningDeployment(self.config, self.env, self.log, level="DEBUG").start()
        return self.run

    @property
    def process(self) -> Any:
        assert self.run is not None and self.run.process is not None, "start the deployment first"
        return self.run.process

    def alive(self) -> bool:
        return self.run is not None and self.run.process is not None and self.run.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost host would end it."""
        assert self.run is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.exits.append(self.run.stop())  # it is gone already: its exit code (-9), its log closed

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> int:
        """SIGTERM, as a supervisor stops it; its exit code."""
        assert self.run is not None
        code = self.run.stop()
        self.exits.append(code)
        return code

    def step_down(self, n: int, locality: str = "North") -> list[Child]:
        """``n`` new children on LCS, each with a complete North Somerset step-down request (the LCS publisher in
        ``casebridge run`` publishes them from LCS's change feed)."""
        made = []
        for _ in range(n):
            k = len(self.children)
            child_id = self.lcs.create_child(locality=locality, postcode=POSTCODES[k % len(POSTCODES)])
            request = self.lcs.request_stepdown(child_id)
            record = self.lcs.child(child_id)
            personal = {key: str(record[key]) for key in ("given_name", "family_name", "date_of_birth", "nhs_number",
                                                          "upn", "postcode")}  # fmt: skip
            made.append(Child(child_id, f"{COUNCIL}-lcs-{request}".lower(), personal))
        self.children += made
        return made

    def log_text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")


@asynccontextmanager
async def council(
    work: Path,
    bootstrap: str,
    prefix: str,
    *,
    ehm_proxy: bool = False,
    batch_size: int | None = None,
    start: bool = True,
) -> AsyncIterator[Council]:
    """The sandboxes, the deployment file (``ehm_proxy``: EHM reached through a ``FaultProxy``) and
    ``casebridge run`` on it at DEBUG; on leaving, any run still going is stopped (SIGTERM)."""
    with sandboxes(work / "systems", ("lcs", "ehm")) as systems, ExitStack() as stack:
        direct_ehm = systems.urls["ehm"]
        fault_proxy = stack.enter_context(FaultProxy(direct_ehm)) if ehm_proxy else None
        if fault_proxy is not None:
            systems.urls["ehm"] = fault_proxy.url
        text, env = deployment_file(
            COUNCIL, systems, bootstrap=bootstrap, prefix=prefix, state_dir=work / "state", retry=FAULT_RETRY
        )
        if batch_size is not None:
            text = text.replace("\n\n[retry]", f"\nbatch_size = {batch_size}\n\n[retry]")
        config = work / f"{COUNCIL}.toml"
        config.write_text(text)
        lcs = LcsSandboxClient(systems.urls["lcs"], systems.token)
        ehm = EhmSandboxClient(direct_ehm, systems.token)  # the test looks at EHM directly, never via the proxy
        c = Council(work, bootstrap, prefix, systems, config, env, work / "casebridge-run.log", lcs, ehm,
                    fault_proxy)  # fmt: skip
        try:
            if start:
                c.start()
            yield c
        finally:
            if c.alive():
                c.resume()  # a paused run cannot honour SIGTERM
                c.stop()
            lcs.close()
            ehm.close()


# -- reading the topics ------------------------------------------------------------------------------------------


class Topic:
    """A topic read from the beginning, kept as it grows (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", group_id=None,
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )  # fmt: skip
            await self._consumer.start()
        return self._consumer

    async def to_end(self, timeout: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record up to the topic's end now (its end offsets when asked)."""
        consumer = await self._started()
        deadline = time.monotonic() + timeout
        while not consumer.assignment() and time.monotonic() < deadline:
            await self.poll(0.2)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return self.records
            await self.poll(0.5)
        raise TimeoutError(f"{self.topic} not read to its end in {timeout:.0f} s")

    async def poll(self, seconds: float = 0.5) -> list[ConsumerRecord[bytes, bytes]]:
        await self._started()
        assert self._consumer is not None
        deadline = time.monotonic() + seconds
        while True:
            batch = await self._consumer.getmany(timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)))
            for records in batch.values():
                self.records.extend(records)
            if not batch or time.monotonic() >= deadline:
                return self.records

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


@dataclass
class Tally:
    """What every transfer of a fault run came to, counted from outside."""

    expected: list[str]
    events: Counter[tuple[str, str]]  # (transfer id, event type) -> records
    delivered_ids: dict[str, set[str]]  # transfer id -> distinct event ids of its ``delivered`` events
    tray: Counter[str]  # transfer id -> items in EHM's Step-Down tray
    closes: Counter[str]  # LCS child id -> ``record_closed`` changes
    dead: list[dict[str, str]]  # every dead letter's headers
    published: Counter[str] = field(default_factory=Counter)  # transfer id -> its records on the transfers topic

    def closed(self, transfer_id: str) -> bool:
        return self.events[(transfer_id, "source-closed")] > 0

    @property
    def lost(self) -> list[str]:
        return [t for t in self.expected if not self.closed(t) or self.tray[t] == 0]

    @property
    def twice(self) -> list[str]:
        """Transfers delivered more than once: two tray items, or two distinct ``delivered`` events."""
        return [t for t in self.expected if self.tray[t] > 1 or len(self.delivered_ids.get(t, ())) > 1]

    @property
    def redelivered_records(self) -> int:
        """``delivered`` event records beyond one per transfer (a batch read again re-emits the same event id)."""
        return sum(max(0, self.events[(t, "delivered")] - 1) for t in self.expected)

    @property
    def published_again(self) -> int:
        """Transfer records beyond one per transfer on the transfers topic (a publisher restarted before its cursor
        was saved publishes again; the router must deliver it once)."""
        return sum(max(0, self.published[t] - 1) for t in self.expected)


async def tally(c: Council, events: Topic, dead: Topic, settle: float = 1.0) -> Tally:
    """Everything on the events, dead-letter and transfers topics (after ``settle`` seconds for late writes), EHM's
    tray and LCS's closes, now."""
    from router.flow import peek_transfer_id

    await asyncio.sleep(settle)
    transfers = Topic(c.bootstrap, f"{c.prefix}.transfers")
    try:
        published = Counter(peek_transfer_id(r.value) or "" for r in await transfers.to_end())
    finally:
        await transfers.stop()
    records = await events.to_end()
    counts: Counter[tuple[str, str]] = Counter()
    delivered: dict[str, set[str]] = {}
    for r in records:
        if r.value is None:
            continue
        e = parse_event(r.value)
        counts[(e.transfer_id or "", e.event_type)] += 1
        if e.event_type == "delivered":
            delivered.setdefault(e.transfer_id or "", set()).add(str(e.event_id))
    tray = Counter(str(i["transfer_id"]) for i in await asyncio.to_thread(c.ehm.tray))
    closes = Counter(await asyncio.to_thread(_closes, c.lcs))
    letters = [{k: v.decode(errors="replace") for k, v in r.headers} for r in await dead.to_end()]
    return Tally([ch.transfer_id for ch in c.children], counts, delivered, tray, closes, letters, published)


def _closes(lcs: LcsSandboxClient) -> list[str]:
    """The child of every ``record_closed`` change in LCS's change feed."""
    found: list[str] = []
    after = 0
    while True:
        page = lcs.http.get("/api/changes", params={"after": after, "limit": 1000}).json()
        found += [ch["child_id"] for ch in page["changes"] if ch["kind"] == "record_closed"]
        after = page["last_seq"]
        if not page["has_more"]:
            return found


async def until_closed(c: Council, events: Topic, timeout: float) -> float:
    """Seconds until every child's transfer has its ``source-closed`` event (TimeoutError naming the missing
    ones and the log's tail otherwise)."""
    started = time.monotonic()
    wanted = {ch.transfer_id for ch in c.children}
    while time.monotonic() - started < timeout:
        seen = {parse_event(r.value).transfer_id for r in await events.poll(0.5) if r.value is not None
                and dict(r.headers).get("event_type") == b"source-closed"}  # fmt: skip
        if wanted <= seen:
            return time.monotonic() - started
        if not c.alive():
            break
    missing = sorted(wanted - seen)
    raise TimeoutError(f"{len(missing)} of {len(wanted)} transfers not closed ({missing[:5]}...); alive "
                       f"{c.alive()}\n{c.log_text()[-3000:]}")  # fmt: skip


async def until_tray(c: Council, more_than: int, timeout: float = 120.0) -> int:
    """Until EHM's tray holds more than ``more_than`` items (the flow is under way); how many it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(await asyncio.to_thread(c.ehm.tray))
        if n > more_than:
            return n
        await asyncio.sleep(0.1)
    raise TimeoutError(f"EHM's tray never passed {more_than} items\n{c.log_text()[-3000:]}")


async def until_members(bootstrap: str, group: str, timeout: float = 60.0) -> set[str]:
    """The group's member ids once it has any (a run that just started may not have joined yet)."""
    deadline = time.monotonic() + timeout
    while not (members := await group_members(bootstrap, group)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return members


async def group_members(bootstrap: str, group: str) -> set[str]:
    """The member ids of a consumer group (a member evicted and rejoined comes back with a new id)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group])
        # DescribeGroupsResponse: groups = [(error_code, group_id, state, protocol_type, protocol, members)]
        (_, _, _state, _, _, members) = described.groups[0][:6]
        return {m[0] for m in members}
    finally:
        await admin.close()


# -- what the suite asserts about every fault ------------------------------------------------------------------


#: log lines a transfer may cost at DEBUG (each step's line, its batch's share), and a fixed allowance for start-up
#: and shut-down; a retry storm or a reconnect loop goes far past it
LINES_PER_TRANSFER = 25
LINES_FIXED = 400


@dataclass
class Figures:
    fault: str
    delivered: int
    dead_lettered: int
    duplicated: int
    lost: int
    seconds_to_recover: float | None
    log_lines: int
    log_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    def show(self) -> str:
        recover = "-" if self.seconds_to_recover is None else f"{self.seconds_to_recover:.1f}"
        more = "".join(f" {k}={v}" for k, v in self.extra.items())
        line = (f"FAULT {self.fault}: delivered={self.delivered} dead-lettered={self.dead_lettered} "
                f"duplicated={self.duplicated} lost={self.lost} seconds-to-recover={recover} "
                f"log-lines={self.log_lines} log-bytes={self.log_bytes}{more}")  # fmt: skip
        print(line)
        return line


def figures(fault: str, c: Council, t: Tally, recovered: float | None, **extra: Any) -> Figures:
    text = c.log_text()
    delivered = sum(1 for x in t.expected if t.tray[x] >= 1 and t.closed(x))
    return Figures(fault, delivered, len(t.dead), len(t.twice), len(t.lost), recovered, text.count("\n"),
                   len(text.encode()), extra)  # fmt: skip


def assert_every_transfer_once(c: Council, t: Tally) -> None:
    """Each child's step-down: in EHM's tray once, its LCS record closed once, one ``delivered`` event id, its
    ``source-closed`` event; nothing of it dead-lettered."""
    assert [] == t.lost
    assert [] == t.twice
    assert {ch.child_id: 1 for ch in c.children} == {ch.child_id: t.closes[ch.child_id] for ch in c.children}
    assert {ch.transfer_id: 1 for ch in c.children} == {ch.transfer_id: t.tray[ch.transfer_id] for ch in c.children}
    mine = {ch.transfer_id for ch in c.children}
    assert [] == [d for d in t.dead if d.get("casebridge.dlq.transfer.id") in mine]


def assert_log_bounded(c: Council, transfers: int) -> None:
    """No traceback in the output, and no more lines than the transfers explain."""
    text = c.log_text()
    assert "Traceback" not in text, text[text.index("Traceback") - 500 :][:3000]
    lines = text.count("\n")
    assert lines <= LINES_PER_TRANSFER * transfers + LINES_FIXED, f"{lines} log lines for {transfers} transfers"


def personal_forms(personal: Mapping[str, str]) -> Iterator[str]:
    """Every form a child's personal data could take in a line: names, date of birth, the NHS number plain,
    spaced 3-3-4, dashed and prefixed, the UPN, the postcode (as written, upper and lower case, unspaced)."""
    for key in ("given_name", "family_name", "date_of_birth", "upn"):
        if personal.get(key):
            yield personal[key]
    nhs = personal.get("nhs_number")
    if nhs:
        spaced, dashed = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}", f"{nhs[:3]}-{nhs[3:6]}-{nhs[6:]}"
        yield from (nhs, spaced, dashed, f"NHS{nhs}", f"NHS {spaced}")
    postcode = personal.get("postcode")
    if postcode:
        yield from (postcode, postcode.lower(), postcode.replace(" ", ""))


def leaks(text: str, people: Iterable[Mapping[str, str]]) -> list[str]:
    """The personal values (as whole words) found in ``text``."""
    found = []
    for personal in people:
        for value in personal_forms(personal):
            if value in text and re.search(rf"(?<![\w-]){re.escape(value)}(?![\w])", text):
                found.append(value)
    return found


# -- a fault-injecting proxy in front of a sandbox ---------------------------------------------------------------


class FaultProxy:
    """A TCP proxy in front of an HTTP service, served from a thread of its own. Its mode says what a new
    connection gets: ``pass`` (piped to the service), ``hang`` (accepted, read, never answered), ``503``
    (answered ``503 Service Unavailable`` and closed), ``refuse`` (nothing listens: the connection is refused).
    Changing the mode drops every open connection, so a kept-alive one does not bypass the fault."""

    MODES = ("pass", "hang", "503", "refuse")

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self.mode = "pass"
        #: connections accepted in each mode
        self.accepted: Counter[str] = Counter()
        #: how long each hung connection was held open by its caller before it gave up (seconds)
        self.held: list[float] = []
        #: how long each hung connection still open when the mode changed had been held (its caller had not given
        #: up yet: its call's deadline had not passed)
        self.cut: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Nothing listening, every connection dropped, every handler finished."""
        await self._set("refuse")
        me = asyncio.current_task()
        handlers = [t for t in asyncio.all_tasks() if t is not me]
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def set(self, mode: str) -> None:
        assert mode in self.MODES, mode
        self._call(self._set(mode))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _set(self, mode: str) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()
        self.mode = mode

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self.accepted[mode] += 1
        self._open.add(writer)
        try:
            if mode == "hang":
                started = time.monotonic()
                while await reader.read(65536):
                    pass  # read what it sends, answer nothing, until the caller gives up
                if self.mode == "hang":
                    self.held.append(time.monotonic() - started)
                else:
                    self.cut.append(time.monotonic() - started)
            elif mode == "503":
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                self._open.add(up_writer)
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                finally:
                    self._open.discard(up_writer)
                    up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            writer.write_eof() if writer.can_write_eof() else None


# -- a fuzz corpus of transfer messages --------------------------------------------------------------------------

MUTATIONS = ("truncated", "wrong-type", "missing-field", "deep-nesting", "invalid-utf8", "huge-string", "wrong-key",
             "null-byte", "number-as-string", "extra-field", "no-key", "not-an-object", "personal-key")  # fmt: skip


@dataclass
class Mutant:
    key: bytes | None
    value: bytes
    mutations: tuple[str, ...]
    #: the synthetic personal data it carries (for the log scan)
    personal: dict[str, str]


def fuzz_base(n: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The n-th valid North Somerset step-down of the corpus (a child LCS does not have), and its child's
    synthetic personal data."""
    from contracts import synthetic_nhs_number, synthetic_upn
    from tests.support import ns_transfer

    doc = ns_transfer(100_000 + n, transfer_id=f"fuzz-{n}", message_id=f"fuzz-{n}-m1", correlation_id=f"fuzz-{n}")
    personal = {"given_name": f"Fuzzina{n}", "family_name": f"Corpusdale-{n}",
                "date_of_birth": f"2013-0{1 + n % 9}-2{n % 8}",
                "nhs_number": synthetic_nhs_number(5000 + n), "upn": synthetic_upn(70_000 + n),
                "postcode": POSTCODES[n % len(POSTCODES)]}  # fmt: skip
    doc["child"].update({k: v for k, v in personal.items() if k != "postcode"})
    return doc, personal


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at] if at else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*at, i))
    return found


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _other_type(rng: Any, value: Any) -> Any:
    choices = [1, -7.5, "a string", [], {}, True, None, [1, "two"], {"nested": "thing"}]
    return rng.choice([c for c in choices if type(c) is not type(value)])


def mutate(
    rng: Any, doc: dict[str, Any], key: bytes | None, personal: Mapping[str, str]
) -> tuple[bytes | None, bytes, str]:
    """One mutation of a valid transfer (its document and its key): the key, the value and the mutation's name."""
    import copy
    import json

    kind = rng.choices(MUTATIONS, weights=[10 if m != "huge-string" else 2 for m in MUTATIONS])[0]
    d = copy.deepcopy(doc)
    paths = _paths(d)
    path = rng.choice(paths)
    parent, last = _get(d, path[:-1]), path[-1]
    if kind == "truncated":
        raw = json.dumps(d).encode()
        return key, raw[: rng.randrange(0, len(raw))], kind
    if kind == "wrong-type":
        parent[last] = _other_type(rng, parent[last])
    elif kind == "missing-field":
        del parent[last]
    elif kind == "deep-nesting":
        depth = rng.choice([64, 1000, 20_000])
        nested = ("[" * depth + "]" * depth) if rng.random() < 0.5 else ('{"a":' * depth + "1" + "}" * depth)
        parent[last] = "NESTED"
        text = json.dumps(d).replace('"NESTED"', nested, 1)
        return key, text.encode(), kind
    elif kind == "invalid-utf8":
        raw = json.dumps(d).encode()
        at = raw.find(b'"', rng.randrange(0, len(raw) - 1)) + 1  # inside a string (or at the start)
        return key, raw[:at] + rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) + raw[at:], kind
    elif kind == "huge-string":
        parent[last] = rng.choice(["x", "Fuzzina ", "9"]) * rng.choice([20_001, 100_000, 400_000])
    elif kind == "wrong-key":
        given = key or b"lcs:LCS-0"
        return rng.choice([b"lcs:LCS-1", b"ehm:" + given, given + b"x", b"", b"\x00\xff"]), json.dumps(d).encode(), kind
    elif kind == "no-key":
        return None, json.dumps(d).encode(), kind
    elif kind == "null-byte":
        raw = json.dumps(d).encode()
        at = rng.randrange(0, len(raw))
        if rng.random() < 0.5:
            return key, raw[:at] + b"\x00" + raw[at:], kind
        parent[last] = f"{parent[last]}\u0000" if isinstance(parent[last], str) else "\u0000"
    elif kind == "number-as-string":
        parent[last] = str(parent[last]) if isinstance(parent[last], int | float) else rng.choice(["1", "1.0", "0x1"])
        d["schema_version"] = rng.choice(["1", "one", 1.5, "01"])
    elif kind == "extra-field":
        target = parent if isinstance(parent, dict) else d
        target[rng.choice(["postcode", "unexpected", "address", "x" * 300])] = personal["postcode"]
    elif kind == "personal-key":  # a sender that keys its data by the child (the key is input too)
        target = parent if isinstance(parent, dict) else d
        name = f"{personal['given_name']} {personal['family_name']}"
        target[rng.choice([personal["nhs_number"], personal["given_name"], name, personal["postcode"]])] = True
    else:  # not-an-object
        return key, json.dumps(rng.choice([[d], "a string", 42, None, True, [1, 2, 3]])).encode(), kind
    return key, json.dumps(d).encode(), kind


def fuzz_corpus(n: int, seed: int = 19) -> tuple[list[Mutant], int]:
    """``n`` mutated transfer messages, each one the contract or its key makes invalid (deterministic for a
    seed), and how many mutants were drawn (those still valid are drawn again)."""
    import json
    import random

    from pydantic import ValidationError

    from contracts import TransferMessage

    rng = random.Random(seed)
    found: list[Mutant] = []
    drawn = 0
    while len(found) < n:
        doc, personal = fuzz_base(len(found))
        key: bytes | None = f"lcs:{doc['child']['identifiers'][0]['id']}".encode()
        value: bytes = json.dumps(doc).encode()
        names: list[str] = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            drawn += 1
            key, value, name = mutate(rng, json.loads(value) if _is_object(value) else doc, key, personal)
            names.append(name)
            if name in ("truncated", "invalid-utf8", "deep-nesting", "not-an-object"):
                break  # no longer a document to mutate again
        if len(value) > 900_000:
            continue  # under the broker's 1 MiB (the oversized record is a fault of its own)
        try:
            parsed = TransferMessage.model_validate_json(value)
        except ValidationError:
            found.append(Mutant(key, value, tuple(names), personal))
            continue
        if key != parsed.child_key.encode():
            found.append(Mutant(key, value, tuple(names), personal))
    return found, drawn


def _is_object(value: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False
