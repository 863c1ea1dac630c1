"""Upgrading a deployment: committed offsets carried over from the consumer groups an earlier version used.

Before #16 each retry tier had its own group (``<group_id>-retry-<n>``) and the notices and the closures had
theirs (``<group_id>-notices``, ``<group_id>-closures``); now every router subscriber is in ``<group_id>`` and
the lifecycle loop in ``<group_id>-lifecycle``. A new group with no committed offset starts from the beginning
of its topics: a tier's transfers would run again (idempotent, but re-run, and queued behind each other), and
the lifecycle would re-read every signal and re-emit every recorded allocation.

So, once, before a group first joins: where the new group has committed nothing on a topic, and the old groups
have, each partition starts where the old groups had got to, the *earliest* of their positions (a record one
old group had not handled yet is read again; none is skipped). A partition one of the old groups had not
committed is left alone (read from the beginning, as without this). The carry-over is a plain offset commit
for the new group while it has no member; if a member of it has joined meanwhile (another process of the same
deployment, starting at the same moment), the broker refuses the commit and nothing is carried over: that
member reads from the beginning, harmlessly. The old groups are left as they are (delete them once the new
version runs: ``kafka-consumer-groups.sh --delete --group ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from connectors import kafka as clients
from connectors.kafka import Kafka

log = structlog.get_logger("casebridge.router")


async def carry_over_offsets(kafka: Kafka, group: str, earlier: Mapping[str, Sequence[str]]) -> int:
    """For each topic of ``earlier`` (topic -> the groups that consumed it before), the old groups' committed
    positions committed for ``group``, if ``group`` has committed nothing on any of these topics. Returns how many
    partitions were carried over (0: nothing to carry, or ``group`` is under way already). Never raises for a
    broker that refuses (no permission on an old group, a member joined meanwhile): it logs one line and carries
    nothing."""
    if not earlier:
        return 0
    admin = clients.admin(kafka)
    try:
        await admin.start()
        mine = await admin.list_consumer_group_offsets(group)
        if any(tp.topic in earlier and o.offset >= 0 for tp, o in mine.items()):
            return 0  # this group has run on these topics: its own positions are the truth
        old: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
        for name in sorted({g for groups in earlier.values() for g in groups}):
            committed = await admin.list_consumer_group_offsets(name)
            old[name] = {tp: o for tp, o in committed.items() if o.offset >= 0}
    except Exception as exc:  # an old group we may not describe, the broker away: start as without the upgrade
        log.warning("offsets_not_carried_over", group=group, error_class=type(exc).__name__)
        return 0
    finally:
        await admin.close()
    carried: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, groups in earlier.items():
        ran = [old[g] for g in groups if any(tp.topic == topic for tp in old[g])]
        if not ran:
            continue
        partitions = {tp for positions in ran for tp in positions if tp.topic == topic}
        for tp in partitions:
            if all(tp in positions for positions in ran):  # else a group had not committed it: from the beginning
                carried[tp] = OffsetAndMetadata(min(positions[tp].offset for positions in ran), "")
    if not carried:
        return 0
    consumer = clients.consumer(kafka, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        consumer.assign(list(carried))
        await consumer.commit(carried)
    except Exception as exc:  # a member of the group joined meanwhile: it reads from the beginning
        log.warning("offsets_not_carried_over", group=group, error_class=type(exc).__name__)
        return 0
    finally:
        await consumer.stop()
    log.info("offsets_carried_over", group=group, partitions=len(carried), topics=sorted({tp.topic for tp in carried}))
    return len(carried)
