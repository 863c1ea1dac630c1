"""Change feeds read from a case system, resumed from a durable cursor after a restart."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiokafka import AIOKafkaProducer


class FileCursor:
    """The last feed position whose outputs Kafka acknowledged; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text(encoding="utf-8"))["after"])
        except FileNotFoundError:
            return 0

    def save(self, after: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": after}), encoding="utf-8")
        os.replace(tmp, self.path)


def idempotent_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """The producer every connector publishes with: idempotent, acknowledged by all replicas."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5)
