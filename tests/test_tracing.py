"""#18 item 8: OpenTelemetry traces, one per transfer, from its publisher through the router to each case-system
call (connectors/_tracing.py), with no personal data in any span; exported over OTLP by ``casebridge run`` when
its deployment file names a collector, and nothing made at all when it does not."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from casebridge.localdeploy import COUNCIL_SYSTEMS, Events, RunningDeployment, deployment_file, free_port, sandboxes
from casebridge.scenarios import LcsSandboxClient
from casebridge.stack import Stack
from connectors import _tracing as tracing
from tests.deployed import QUICK_RETRY
from tests.support import Systems, transfer_events


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _traces(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    by: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        assert s.context is not None
        by[s.context.trace_id].append(s)
    return by


async def test_one_trace_per_transfer_from_its_publisher_through_the_router_to_each_case_system_call(
    spans: InMemorySpanExporter, stack: Stack, systems: Systems
) -> None:
    lcs = systems.lcs_client
    children = [lcs.create_child(locality="North", given_name=f"Traceable{i}") for i in range(2)]
    requests = [lcs.request_stepdown(c) for c in children]
    assert 2 == await stack.publisher.poll_once()
    tids = [f"north-somerset-lcs-{r}".lower() for r in requests]
    for tid in tids:
        await transfer_events(stack, tid, "source-closed")
    await asyncio.sleep(0.2)  # the last connector call's span ends after its event is written

    traces = _traces(spans.get_finished_spans())
    of_transfer = {
        tid: [t for t in traces.values() if any(s.attributes.get("casebridge.transfer_id") == tid for s in t)]
        for tid in tids
    }
    assert all(len(found) == 1 for found in of_transfer.values()), "each transfer is in one trace"
    assert of_transfer[tids[0]][0] is not of_transfer[tids[1]][0], "each in a trace of its own"
    for tid, [trace] in of_transfer.items():
        [publish] = [s for s in trace if s.name == "casebridge publish"]
        [route] = [s for s in trace if s.name == "casebridge route"]
        assert (SpanKind.PRODUCER, SpanKind.CONSUMER) == (publish.kind, route.kind)
        assert publish.parent is None and route.parent is not None
        assert route.parent.span_id == publish.context.span_id  # type: ignore[union-attr]
        assert "completed" == route.attributes.get("casebridge.outcome")
        calls = [s for s in trace if s.kind is SpanKind.CLIENT]
        assert all(c.parent is not None and c.parent.span_id == route.context.span_id for c in calls)  # type: ignore[union-attr]
        systems_called = {c.attributes.get("casebridge.system") for c in calls}
        assert {"lcs", "ehm"} <= systems_called, f"{tid}: the source and the target calls: {systems_called}"
        # the source close (LCS) after EHM's acknowledgement, in the same trace
        assert any(c.attributes.get("casebridge.system") == "lcs" and "POST" in c.name for c in calls), tid
    # no personal data anywhere in a span: the children's names never, ids only
    for s in spans.get_finished_spans():
        text = s.name + " " + " ".join(f"{k}={v}" for k, v in (s.attributes or {}).items())
        assert "Traceable" not in text
        assert not any(c in text for c in children), "no child record id in a span"


def test_an_error_in_a_span_is_its_class_only_never_its_text(spans: InMemorySpanExporter) -> None:
    """OpenTelemetry's defaults record an exception leaving a span as an event (message, stack) and write it into
    the span's status; an exception's text may carry a record's values, so casebridge's spans carry neither."""
    with pytest.raises(ValueError), tracing.calling("ehm", "PUT /api/stepdown-tray/{id}"):
        raise ValueError("Jane Doe, born 2014-03-02, NHS 9990000018")
    [span] = spans.get_finished_spans()
    assert (span.events, span.status.description) == ((), None)
    assert span.status.status_code.name == "ERROR" and dict(span.attributes or {})["error.type"] == "ValueError"
    assert "Jane" not in str([span.to_json()])


def test_with_no_collector_no_span_is_made() -> None:
    assert not tracing.active()
    with tracing.calling("ehm", "POST /api/stepdown-tray") as span:
        assert span is None
    assert [] == tracing.headers_with_context([("a", b"1")])[1:]


class _Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP collector's /v1/traces: keeps every span it is sent."""

    def __init__(self, port: int) -> None:
        self.spans: list[Any] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        outer.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


async def test_casebridge_run_exports_a_transfers_trace_to_the_collector_its_file_names(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    collector = _Collector(port)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    with ExitStack() as stack:
        stack.callback(collector.server_close)
        stack.callback(collector.shutdown)  # first: callbacks run last-in first-out
        systems = stack.enter_context(sandboxes(tmp_path / "systems", COUNCIL_SYSTEMS["north-somerset"]))
        text, env = deployment_file(
            "north-somerset", systems, bootstrap=kafka_bootstrap, prefix=topic_prefix, state_dir=tmp_path / "state",
            retry=QUICK_RETRY,
        )  # fmt: skip
        config = tmp_path / "north-somerset.toml"
        config.write_text(text + f'\n[tracing]\notlp_endpoint = "http://127.0.0.1:{port}"\n')
        run = stack.enter_context(RunningDeployment(config, env, tmp_path / "run.log"))
        lcs = stack.enter_context(closing(LcsSandboxClient(systems.urls["lcs"], systems.token)))
        request = lcs.request_stepdown(lcs.create_child(locality="North"))
        tid = f"north-somerset-lcs-{request}".lower()
        events = Events(kafka_bootstrap, f"{topic_prefix}.events")
        try:
            await events.until({tid: "source-closed"}, timeout=120)
        finally:
            await events.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = _exported(collector.spans, tid)
            if {"casebridge publish", "casebridge route"} <= set(names) and len(names) >= 5:
                break
            await asyncio.sleep(0.5)
        assert run.process is not None and run.process.poll() is None
    names = _exported(collector.spans, tid)
    assert {"casebridge publish", "casebridge route"} <= set(names), names
    assert any(n.startswith("ehm ") for n in names) and any(n.startswith("lcs ") for n in names), names


def _exported(spans: list[Any], tid: str) -> list[str]:
    """The names of the exported spans in the trace of transfer ``tid``."""
    ids = {
        s.trace_id
        for s in spans
        for a in s.attributes
        if a.key == "casebridge.transfer_id" and a.value.string_value == tid
    }
    return [s.name for s in spans if s.trace_id in ids]
