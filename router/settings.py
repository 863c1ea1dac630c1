"""The router's typed settings: built from a deployment file (``casebridge/deployment.py``) by ``casebridge
run``, or read from ``CASEBRIDGE_*`` environment variables by the operator commands (Kafka, topic prefix)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.kafka import KafkaConnection, KafkaSecurity
from contracts import Council, wire


@dataclass(frozen=True)
class Topics:
    """The topics of one casebridge deployment, all under one prefix."""

    prefix: str = "casebridge"

    @property
    def transfers(self) -> str:
        """Transfer requests from source connectors, keyed by child."""
        return f"{self.prefix}.transfers"

    @property
    def events(self) -> str:
        """Every step of every transfer (contracts.TransferEvent), keyed by transfer id."""
        return f"{self.prefix}.events"

    @property
    def dead_letter(self) -> str:
        """Messages that could not be handled, byte for byte, with the reason in headers."""
        return f"{self.prefix}.dlq"

    def retry(self, tier: int) -> str:
        """Delayed retry tier ``tier`` (0 first): transfers whose target was unavailable wait here."""
        return f"{self.prefix}.retry.{tier}"

    @property
    def retry_state(self) -> str:
        """Compacted: which children have transfers waiting in a retry tier (keeps per-child order)."""
        return f"{self.prefix}.retry-state"

    @property
    def lifecycle(self) -> str:
        """Compacted: each child's completed transfers (transfer id -> message id); a copy of one is a duplicate."""
        return f"{self.prefix}.lifecycle"

    @property
    def history(self) -> str:
        """Compacted: each child's recent step-downs, keyed by identifier (LU-9, NS-10)."""
        return f"{self.prefix}.child-history"

    @property
    def pending_notices(self) -> str:
        """Compacted: notices due when a transfer is allocated (LU-7), keyed by transfer id; tombstoned once sent."""
        return f"{self.prefix}.pending-notices"

    @property
    def pending_closures(self) -> str:
        """Compacted: source records to close later (LU-4, SW22-10, NS-12), by transfer id; tombstoned once closed."""
        return f"{self.prefix}.pending-closures"

    @property
    def feed_cursors(self) -> str:
        """Compacted, one partition: each source feed's cursor, keyed by the feed's name; the deployment's feeds run
        in the process its ``<group_id>-feeds`` group gives partition 0 (``connectors._cursors``)."""
        return f"{self.prefix}.feed-cursors"

    @property
    def parking(self) -> str:
        """Replayed messages that failed again: kept here for a person, never looped back."""
        return f"{self.prefix}.parking"

    @property
    def remap(self) -> str:
        """Replayed map-stage dead letters (the source record, as dead-lettered), each for the feed publisher its
        ``casebridge.dlq.publisher`` names to map again (``connectors._feed.FeedPublisher.remap_once``)."""
        return f"{self.prefix}.remap"

    @property
    def audit(self) -> str:
        """Operators' actions: replays, keyed by the dead letter they acted on; recorded allocations (BA-9),
        keyed ``ALLOCATION_AUDIT_PREFIX`` + transfer id."""
        return f"{self.prefix}.audit"

    @property
    def intake_audit(self) -> str:
        """Every post to the intake (``connectors/intake``), accepted or refused, keyed ``INTAKE_AUDIT_PREFIX`` +
        transfer id: kept as the audit topic is, but apart from it, written by the ``casebridge run`` principal
        (which may not write the operators' audit topic)."""
        return f"{self.prefix}.intake-audit"


#: the audit topic's key prefix for a recorded allocation (a replay's key is its dead letter id)
ALLOCATION_AUDIT_PREFIX = wire.ALLOCATION_AUDIT_PREFIX
#: the audit topic's key prefix for a milestone an operator recorded on the monitor (``milestone/<transfer>/<step>``)
MILESTONE_AUDIT_PREFIX = wire.MILESTONE_AUDIT_PREFIX


class RetrySettings(BaseModel):
    """In-process retries of a transient failure (timeouts, 5xx, 429) before dead-lettering."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    attempts: int = Field(default=5, ge=1, le=50)
    initial_seconds: float = Field(default=0.2, gt=0)
    max_seconds: float = Field(default=5.0, gt=0)
    total_seconds: float = Field(default=30.0, gt=0)
    #: delays of the delayed retry topics, in order; after the last, the dead-letter topic
    tiers: list[float] = Field(default_factory=lambda: [30.0, 300.0], min_length=1, max_length=10)


#: the case-system calls one transfer makes at most, each within ``retry.total_seconds`` (``router/flow.py``
#: ``_retrying``): the source record's state, the leader's absence, the delivery, its confirmation, the close (or
#: keep-open), a notice
CALLS_PER_TRANSFER = 6
#: the longest a batch may take: the consumer's ``max.poll.interval.ms`` is derived from the settings' bound on it
#: (``batch_seconds``), and a deployment whose bound is over this is refused at start
MAX_BATCH_SECONDS = 3600


def batch_seconds(batch_size: int, concurrency: int, retry: RetrySettings) -> float:
    """The longest a batch of the transfers topic can take: its records ``concurrency`` at a time, each transfer's
    calls within the retry budget (each call's attempts end with ``retry.total_seconds``, ``connectors._budget``)."""
    return -(-batch_size // concurrency) * CALLS_PER_TRANSFER * retry.total_seconds


def batch_budget_problem(batch_size: int, concurrency: int, retry: RetrySettings) -> str | None:
    """Why these settings would let a batch outlast ``MAX_BATCH_SECONDS`` (its consumer evicted), in one line."""
    worst = batch_seconds(batch_size, concurrency, retry)
    if worst <= MAX_BATCH_SECONDS:
        return None
    return (
        f"batch_size / concurrency x {CALLS_PER_TRANSFER} calls x retry.total_seconds = {batch_size} / {concurrency}"
        f" x {CALLS_PER_TRANSFER} x {retry.total_seconds:g} = {worst:.0f} s, over the {MAX_BATCH_SECONDS} s a batch"
        " may take before its consumer is evicted: lower batch_size or retry.total_seconds, or raise concurrency"
    )


DAY_MS = 24 * 3600 * 1000


class TopicSettings(BaseModel):
    """The deployment file's ``[topics]``: how casebridge creates its topics."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    partitions: int = Field(default=3, ge=1, le=1000)
    #: None: 3, or the number of brokers where the cluster has fewer
    replication_factor: int | None = Field(default=None, ge=1, le=10)
    #: None: the replication factor less one (at least 1)
    min_insync_replicas: int | None = Field(default=None, ge=1, le=10)
    #: dead letters, parked messages and the audit trail: -1 keeps them until a person deletes them
    kept_retention_ms: int = Field(default=-1, ge=-1)
    transfers_retention_ms: int = Field(default=7 * DAY_MS, ge=-1)
    events_retention_ms: int = Field(default=365 * DAY_MS, ge=-1)
    #: True: an unset replication factor is fitted to a smaller cluster (tests, the local broker); a deployment
    #: file without ``local_development = true`` sets it False: fewer brokers than 3 are refused at start unless
    #: ``replication_factor`` is set (``with_fitted_replication``)
    _fit_replication: bool = PrivateAttr(default=True)

    def with_fitted_replication(self, fit: bool) -> TopicSettings:
        """These settings, the unset replication factor fitted to a smaller cluster (``fit``) or not."""
        out = self.model_copy()
        out._fit_replication = fit
        return out

    @property
    def fit_replication(self) -> bool:
        return self._fit_replication


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CASEBRIDGE_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    #: how to talk to Kafka: TLS, SASL (``CASEBRIDGE_KAFKA__SECURITY_PROTOCOL``, ``__USERNAME``, ...)
    kafka: KafkaSecurity = KafkaSecurity()
    topic_prefix: str = "casebridge"
    group_id: str = "casebridge-router"
    #: records handled together: their outputs are acknowledged, and their offsets committed, once
    batch_size: int = Field(default=500, ge=1, le=10_000)
    #: how long a poll waits for records when none are ready (a batch holds what had arrived by then)
    batch_timeout_ms: int = Field(default=50, ge=0, le=10_000)
    concurrency: int = Field(default=32, ge=1, le=1_000)
    retry: RetrySettings = RetrySettings()
    #: how the topics are created and what the existing ones must keep (``router/topics.py``)
    topic_config: TopicSettings = TopicSettings()
    #: the council whose case systems this deployment reads (its protocol applies to what they publish)
    council: Council = Council.NORTH_SOMERSET

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def max_poll_interval_ms(self, delay: float = 0.0) -> int:
        """A subscriber's ``max.poll.interval.ms``: a tier's wait (``delay``), then the longest its batch can take
        (``batch_seconds``), and a minute to hand its outputs over: a member working within its settings is never
        evicted from its group."""
        return int((delay + batch_seconds(self.batch_size, self.concurrency, self.retry) + 60) * 1000)

    @property
    def connection(self) -> KafkaConnection:
        """Where Kafka is and how to talk to it: what every client of this deployment is built from."""
        return KafkaConnection.of(self.bootstrap_servers, self.kafka)
