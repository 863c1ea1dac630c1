"""How each topic of a deployment is created, and the check at start that the existing ones keep what they must.

- dead letters, parking, audit, intake-audit: ``retention.ms`` = ``kept_retention_ms`` (-1: kept until a person deletes
  them; G3, nothing is lost);
- retry-state, child-history, pending-notices, pending-closures, feed-cursors: ``cleanup.policy=compact`` (state:
  the latest value per key; feed-cursors has one partition, its owner runs the feeds);
- transfers, retry tiers and remap (replayed map-stage dead letters: source records, handled as transfers
  are): ``retention.ms`` = ``transfers_retention_ms`` (7 days: a transfer is handled in seconds);
- events: ``retention.ms`` = ``events_retention_ms`` (a year: what the monitor can rebuild from).

Co-partitioning (``copartitioned``): the transfers topic, every retry tier, retry-state, events, pending-notices and
pending-closures must have the same partition count. A child's (or a transfer's) records are on the same partition
number of each, which is what lets many router processes share the work (``router/_assignor.py``); an existing
topic with another count is refused at start, naming the topics and their counts.

Every topic gets ``min.insync.replicas`` and its replication factor from the settings; by default 3 and 2.
A cluster with fewer brokers than that is refused at start, naming ``[topics] replication_factor``, unless the
setting is given or the deployment says ``local_development = true`` (then what the cluster can hold: a
one-broker development Kafka, 1 and 1). An existing dead-letter, parking, audit or intake-audit topic that would delete
records (``retention.ms`` other than -1 or ``kept_retention_ms``, ``retention.bytes`` other than -1, or a
``cleanup.policy`` that compacts), or a state topic that is not compacted, is refused at start, naming the topic
and the setting (``casebridge run`` says it in one line and exits 5): Kafka's default retention
(7 days) would otherwise delete dead letters without a word.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from connectors import kafka as clients
from connectors.kafka import Kafka

from .settings import DAY_MS, Topics, TopicSettings


class TopicMisconfigured(Exception):
    """An existing topic whose configuration would lose what casebridge keeps in it."""


def kept(topics: Topics) -> list[str]:
    return [topics.dead_letter, topics.parking, topics.audit, topics.intake_audit]


def compacted(topics: Topics) -> list[str]:
    return [topics.retry_state, topics.lifecycle, topics.history, topics.pending_notices, topics.pending_closures,
            topics.feed_cursors]  # fmt: skip


def copartitioned(topics: Topics, tiers: int) -> list[str]:
    """The topics whose partition p one router process owns together (their partition counts must be equal)."""
    return [
        topics.transfers,
        *(topics.retry(i) for i in range(tiers)),
        topics.retry_state,
        topics.lifecycle,
        topics.events,
        topics.pending_notices,
        topics.pending_closures,
    ]


def configs(topics: Topics, tiers: int, s: TopicSettings, min_insync: int) -> dict[str, dict[str, str]]:
    """Each topic's configuration, as it is created."""
    out: dict[str, dict[str, str]] = {}
    for name in [topics.transfers, *(topics.retry(i) for i in range(tiers)), topics.remap]:
        out[name] = {"retention.ms": str(s.transfers_retention_ms)}
    out[topics.events] = {"retention.ms": str(s.events_retention_ms)}
    for name in kept(topics):
        out[name] = {"retention.ms": str(s.kept_retention_ms), "retention.bytes": "-1", "cleanup.policy": "delete"}
    for name in compacted(topics):
        out[name] = {"cleanup.policy": "compact"}
    for config in out.values():
        config["min.insync.replicas"] = str(min_insync)
    return out


async def prepare(kafka: Kafka, topics: Topics, tiers: int, s: TopicSettings, only: set[str] | None = None) -> None:
    """Create the missing topics as ``configs`` says, then check the existing ones; raises TopicMisconfigured.
    ``only``: just these of the deployment's topics (a publisher that writes two of them)."""
    admin = clients.admin(kafka)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"]) or 1
        _check_replication(s, brokers)
        replication = s.replication_factor or min(DEFAULT_REPLICATION, brokers)
        min_insync = s.min_insync_replicas or max(1, replication - 1)
        wanted = configs(topics, tiers, s, min_insync)
        if only is not None:
            wanted = {n: c for n, c in wanted.items() if n in only}
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(n, 1 if n == topics.feed_cursors else s.partitions, replication, topic_configs=c)
            for n, c in wanted.items()
            if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        # only the topics that were there before: a topic just created has its configuration (and a broker may
        # not yet describe it: KRaft's metadata reaches the brokers a moment later)
        checked = [n for n in [*kept(topics), *compacted(topics)] if n in existing and n in wanted]
        found = await _configs(admin, checked) if checked else {}
        together = [n for n in copartitioned(topics, tiers) if n in wanted]
        counts = {n: s.partitions for n in together if n not in existing}
        before = [n for n in together if n in existing]
        if before:
            for t in await admin.describe_topics(before):
                counts[t["topic"]] = len(t["partitions"])
    finally:
        await admin.close()
    problems = []
    for name in (n for n in kept(topics) if n in found):
        policy = found.get(name, {}).get("cleanup.policy", "")
        if "compact" in policy.split(","):
            problems.append(
                f"topic {name} has cleanup.policy={policy}: compaction keeps one record per key and would delete the"
                f" others; set cleanup.policy=delete on it (kafka-configs.sh --alter --entity-type topics"
                f" --entity-name {name} --add-config cleanup.policy=delete)"
            )
        size = int(found.get(name, {}).get("retention.bytes", "-1"))
        if size != -1:
            problems.append(
                f"topic {name} has retention.bytes={size}: its oldest records would be deleted past that size; set"
                f" its retention.bytes to -1 (kafka-configs.sh --alter --entity-type topics --entity-name {name}"
                " --add-config retention.bytes=-1)"
            )
        retention = int(found.get(name, {}).get("retention.ms", "-1"))
        if retention != -1 and (s.kept_retention_ms == -1 or retention < s.kept_retention_ms):
            days = retention / DAY_MS
            problems.append(
                f"topic {name} has retention.ms={retention} ({days:g} days): its records would be deleted; set its"
                f" retention.ms to {s.kept_retention_ms} (kafka-configs.sh --alter --entity-type topics"
                f" --entity-name {name} --add-config retention.ms={s.kept_retention_ms}), or lower the deployment's"
                " topics.kept_retention_ms"
            )
    for name in (n for n in compacted(topics) if n in found):
        policy = found.get(name, {}).get("cleanup.policy", "")
        if "compact" not in policy.split(","):
            problems.append(
                f"topic {name} has cleanup.policy={policy or 'delete'}: casebridge's state there must be compacted;"
                f" set cleanup.policy=compact on it"
            )
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}={c}" for n, c in counts.items())
        problems.append(
            f"topics {listed} do not have the same partition count: a child's records must be on the same"
            " partition of each (co-partitioning); add partitions to the smaller ones (kafka-topics.sh --alter"
            " --partitions N) before any record is written to them, or recreate them"
        )
    if problems:
        raise TopicMisconfigured("; ".join(problems))


#: copies of each record unless ``[topics] replication_factor`` says otherwise
DEFAULT_REPLICATION = 3


def _check_replication(s: TopicSettings, brokers: int) -> None:
    """Refused (one line naming the setting): a replication factor the cluster cannot hold, or, outside a local
    development deployment, fewer brokers than the default replication factor with none set."""
    if s.replication_factor is not None and s.replication_factor > brokers:
        raise TopicMisconfigured(
            f"[topics] replication_factor = {s.replication_factor} but the cluster has {brokers} broker(s): lower"
            " it, or add brokers"
        )
    if s.replication_factor is None and brokers < DEFAULT_REPLICATION and not s.fit_replication:
        raise TopicMisconfigured(
            f"the cluster has {brokers} broker(s), fewer than the default replication factor {DEFAULT_REPLICATION}:"
            f" each record would have {brokers} cop{'y' if brokers == 1 else 'ies'} only; add brokers, or set"
            f" [topics] replication_factor = {brokers} to accept that"
        )


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            entries = resource["config_entries"]
            out[resource["resource_name"]] = {e["config_names"]: e["config_value"] for e in entries}
    return out
