"""Co-partitioned assignment: partition p of every topic of a consumer group goes to one process.

The Kafka Streams model. One ``casebridge run`` process has several consumers in the router's group (the
transfers topic and each retry tier, each its own consumer so that a tier's records can wait until due). A
child's records are on the same partition number of every one of those topics (keyed by the child, the
producer's murmur2, the same partition count), and the child's retry state is on that partition number of
the retry-state topic. So the group's leader must give partition p of the transfers topic and of every tier
to the same process: else two processes hold diverging views of which children are parked.

Each consumer's member metadata carries its process's instance id in ``user_data`` (as Kafka Streams' assignor
carries its process id), and the topics that process will subscribe with all its consumers. The leader groups the
members by instance; an instance counts once it has a member for every topic it declared and every topic any
member subscribes to (a process still starting its consumers gets nothing yet, not even when it is the only one:
the rebalance its last consumer's join causes gives it its share, so no first batch is cut short by the next
join). Partition p of every topic goes to ``complete[p % n]`` (instances sorted by id), to that instance's member
subscribed to the topic.

aiokafka takes assignor classes, not instances: ``for_instance`` makes a subclass carrying the id.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable, Mapping

import structlog
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = structlog.get_logger("casebridge.router.assignor")


class CoPartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Partition p of every subscribed topic to one instance (see the module's text)."""

    name = "casebridge-copartitioned"
    version = 0
    #: this process's instance id (set by ``for_instance``)
    instance: bytes = b""
    #: every topic this process's consumers in the group subscribe (set by ``for_instance``; empty: not said)
    topics: frozenset[str] = frozenset()

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        declared = b"\n" + ",".join(sorted(cls.topics)).encode() if cls.topics else b""
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), cls.instance + declared)

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        instances: dict[str, bytes] = {}
        declared: dict[bytes, set[str]] = {}
        for m, md in members.items():
            instance, _, topics = (md.user_data or m.encode()).partition(b"\n")
            instances[m] = instance
            if topics:
                declared[instance] = set(topics.decode().split(","))
        plan = plan_assignment(
            {m: (instances[m], list(md.subscription)) for m, md in members.items()},
            {t: sorted(cluster.partitions_for_topic(t) or ()) for md in members.values() for t in md.subscription},
            declared,
        )
        # each assignment names its member's process too: a group described by an operator's tool (the broker
        # keeps assignments, not the members' metadata) counts processes, not members (router.deadletters)
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[member].items()), instance)
            for member, instance in instances.items()
        }

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        return None


def plan_assignment(
    members: Mapping[str, tuple[bytes, list[str]]],
    partitions: Mapping[str, list[int]],
    declared: Mapping[bytes, set[str]] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """member id -> topic -> partitions; ``members``: member id -> (instance id, subscribed topics); ``declared``:
    instance id -> every topic that process will subscribe (those not in it did not say)."""
    declared = declared or {}
    topics = {t for _, subscribed in members.values() for t in subscribed}
    by_instance: dict[bytes, dict[str, str]] = collections.defaultdict(dict)  # instance -> topic -> member
    for member in sorted(members):
        instance, subscribed = members[member]
        for topic in subscribed:
            by_instance[instance].setdefault(topic, member)
    complete = sorted(
        i for i, covered in by_instance.items() if topics | declared.get(i, set()) <= covered.keys()
    )  # fmt: skip
    out: dict[str, dict[str, list[int]]] = {m: {t: [] for t in members[m][1]} for m in members}
    for topic in sorted(topics):
        if complete:
            owners = [by_instance[i][topic] for i in complete]
        else:  # no process has all its consumers in yet: those that did not say which they will have (a
            # consumer of another kind) take each topic they subscribe, still p % n; the others wait
            owners = sorted(
                by_instance[i][topic] for i in by_instance if topic in by_instance[i] and i not in declared
            )  # fmt: skip
        for p in partitions.get(topic, []) if owners else ():
            out[owners[p % len(owners)]][topic].append(p)
    return out


def for_instance(instance: str | None = None, topics: Iterable[str] = ()) -> type[CoPartitionedAssignor]:
    """The assignor class for one process (its own instance id, new by default; ``topics``: every topic its
    consumers in the group will subscribe, so that it takes no partition before the last of them joined)."""
    ident = (instance or uuid.uuid4().hex).encode()
    attrs = {"instance": ident, "topics": frozenset(topics)}
    return type("CoPartitionedAssignor", (CoPartitionedAssignor,), attrs)
