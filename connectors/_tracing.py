"""OpenTelemetry traces: one trace per transfer, from its publisher through the router to each case-system call.

A publisher starts the trace (``publishing``) and puts its context in the transfer's Kafka headers (W3C
``traceparent``); the router continues it for each record it handles (``handling``: the retry tiers keep the
headers, so a retried transfer stays in its trace); every case-system call is a child span (``calling``, in
``connectors/_http.py``). Spans name what was done and carry ids only: the transfer id, council, system, the
call's method and path template, the status and the outcome; never a value of the transfer (no personal data in
any span name or attribute, and no exception text: an error is its class, ``error.type``).

Off by default: until ``configure`` installs an exporter (``casebridge run`` with a ``[tracing]`` table naming an
OTLP collector), no span is made at all, not even the API's no-op one, so tracing costs nothing when off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from contracts import wire

TRACER = trace.get_tracer("casebridge")
#: the header names the W3C trace context propagator writes
_PROPAGATED = wire.TRACE_HEADERS
_active = False
_provider: Any = None


@contextlib.contextmanager
def _span(name: str, **options: Any) -> Iterator[Span]:
    """A span whose error is its class only: an exception leaving it is neither recorded as a span event nor written
    into its status (OpenTelemetry's defaults do both), since its text may carry a URL or a record's values; the
    span says ``error.type`` and an error status instead."""
    with TRACER.start_as_current_span(name, record_exception=False, set_status_on_exception=False, **options) as span:
        try:
            yield span
        except Exception as exc:
            if "error.type" not in (getattr(span, "attributes", None) or {}):  # a connector may have named it
                span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise


def active() -> bool:
    return _active


def configure(provider: Any) -> None:
    """Trace from now on through ``provider`` (an SDK ``TracerProvider`` with its span processors)."""
    global _active, _provider, TRACER
    _provider = provider
    TRACER = provider.get_tracer("casebridge")
    _active = True


def configure_otlp(endpoint: str, service_name: str) -> None:
    """Export spans over OTLP/HTTP to ``endpoint`` (a collector's base URL, e.g. ``http://collector:4318``), in
    batches off the event loop's thread."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    configure(provider)


def shutdown() -> None:
    """Export what is buffered and stop tracing (``casebridge run`` at its end)."""
    global _active, _provider
    if _provider is not None:
        with contextlib.suppress(Exception):  # a collector away at the end loses its last spans, nothing else
            _provider.force_flush(timeout_millis=3000)
            _provider.shutdown()
    _active, _provider = False, None


def headers_with_context(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` plus the current trace context (none when tracing is off or no span is current)."""
    out = [(k, v) for k, v in headers if k not in _PROPAGATED]
    if _active:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        out += [(k, v.encode()) for k, v in carrier.items()]
    return out


@contextlib.contextmanager
def publishing(transfer_id: str | None, publisher: str, topic: str) -> Iterator[Span | None]:
    """A publisher's span for one transfer it publishes (a trace's root)."""
    if not _active:
        yield None
        return
    attributes = {"casebridge.transfer_id": transfer_id or "", "casebridge.publisher": publisher}
    attributes["messaging.destination.name"] = topic
    with _span("casebridge publish", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def handling(
    transfer_id: str, headers: Sequence[tuple[str, bytes]] | None, topic: str, partition: int
) -> Iterator[Span | None]:
    """The router's span for one record of a transfer, in the trace its headers carry (a new one if none)."""
    if not _active:
        yield None
        return
    carrier = {k: bytes(v).decode(errors="replace") for k, v in headers or () if k in _PROPAGATED}
    parent = propagate.extract(carrier) if carrier else None
    attributes: dict[str, str | int] = {
        "casebridge.transfer_id": transfer_id,
        "messaging.destination.name": topic,
        "messaging.kafka.destination.partition": partition,
    }
    with _span("casebridge route", context=parent, kind=SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def calling(system: str, operation: str) -> Iterator[Span | None]:
    """A span for one call to a case system: ``operation`` is its method and path template (no id in it)."""
    if not _active:
        yield None
        return
    attributes = {"casebridge.system": system, "casebridge.operation": operation}
    with _span(f"{system} {operation}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span
