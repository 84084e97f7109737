"""Which server-less broker `autofunnel run` uses: kombu's filesystem or SQLAlchemy transport.

    python bench/bench_broker.py                       # both server-less kinds
    python bench/bench_broker.py --redis redis://127.0.0.1:6379/5 --messages 2000

Publishes `--messages` delivery batches (50 ids each, as the scheduler does),
then consumes them all, through plain kombu on each transport. Printed:
messages/s and ms per message for publishing and consuming, and the ratio
to the fastest. The SQLAlchemy transport runs on its own SQLite file, as it
would next to the funnel database.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue

from autofunnel.services.broker import QUEUE, broker_for


def measure(url: str, options: dict[str, Any], messages: int) -> tuple[float, float]:
    """(publishes/s, consumes/s) through one connection."""
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
    with Connection(url, transport_options=options) as connection:
        producer = connection.Producer(serializer="json")
        started = time.perf_counter()
        for number in range(messages):
            producer.publish({"ids": list(range(number, number + 50))}, exchange=queue.exchange, routing_key=QUEUE, declare=[queue])
        published = time.perf_counter() - started
        received = 0

        def take(body: Any, message: Any) -> None:
            nonlocal received
            received += 1
            message.ack()

        started = time.perf_counter()
        with connection.Consumer(queue, callbacks=[take]):
            while received < messages:
                connection.drain_events(timeout=5)
        consumed = time.perf_counter() - started
    return messages / published, messages / consumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--redis", help="also measure this Redis URL (a database you can flush)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    folder = broker_for(f"filesystem://{work / 'folder'}")
    kinds: list[tuple[str, str, dict[str, Any]]] = [
        ("filesystem (folder)", folder.kombu_url, folder.options),
        ("sqlalchemy (SQLite)", f"sqla+sqlite:///{work / 'broker.db'}", {}),
    ]
    if args.redis:
        kinds.append(("redis", args.redis, {}))
    print(f"{args.messages} messages of 50 ids each; load average {os.getloadavg()[0]:.2f}")
    results = [(name, *measure(url, options, args.messages)) for name, url, options in kinds]
    best_publish = max(result[1] for result in results)
    best_consume = max(result[2] for result in results)
    for name, publish, consume in results:
        print(
            f"{name:22} publish {publish:7.0f}/s ({1000 / publish:.2f} ms, x{best_publish / publish:.1f})"
            f"   consume {consume:7.0f}/s ({1000 / consume:.2f} ms, x{best_consume / consume:.1f})"
        )


if __name__ == "__main__":
    main()
