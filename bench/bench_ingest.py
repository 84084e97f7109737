"""Event ingestion through the HTTP API: events per second.

    pip install '.[bench]'
    python bench/bench_ingest.py                       # SQLite
    python bench/bench_ingest.py --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench

Starts gunicorn (2 workers) on loopback with the starter project (yoga funnel
and abandoned-cart sequence), then posts batches of 1000 events to
`POST /api/v1/events` from several client threads: cart updates from new
shoppers (each starts the cart sequence: a new lead, an event, an enrollment)
and, one event in ten from the fourth batch on, purchases from shoppers whose
cart came three batches earlier (each stops that shopper's cart sequence and
cancels what it queued). Prints events/s over the whole run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from autofunnel.clock import SystemClock
from autofunnel.services.credentials import create_api_key
from autofunnel.store.db import Database, backend_name
from common import fresh_project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BACK = 3
"""How many batches before its purchase a shopper's cart came. With the batch just before, a
purchase often waited for that batch, still in the other worker, to commit its new lead."""


def batch(number: int, size: int) -> bytes:
    items = []
    for i in range(size):
        shopper = number * size + i
        if number >= BACK and i % 10 == 0:
            earlier = (number - BACK) * size + i + 1  # a shopper whose cart an earlier batch started
            items.append({"type": "purchase", "email": f"s{earlier}@bench.example", "id": f"order-{earlier}", "properties": {"product": "mat", "amount": 20}})
        else:
            items.append({
                "type": "cart_updated", "email": f"s{shopper}@bench.example", "id": f"cart-{shopper}",
                "properties": {"cart_id": f"c{shopper}", "value": 20, "items": [{"name": "Mat", "quantity": 1, "price": 20}], "checkout_url": "https://shop.example/c"},
            })
    return json.dumps(items).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work, project, url = fresh_project("af-ingest-", args.database_url)
    db = Database.from_url(url)
    _, key = create_api_key(db, SystemClock(), "bench")
    db.dispose()
    port = free_port()
    env = {**os.environ, "AUTOFUNNEL_PROJECT_DIR": str(project), "AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789", "AUTOFUNNEL_SMTP_URL": f"file://{work}/outbox"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", "autofunnel.web:create_app()"],
        env=env,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        bodies = [batch(n, args.size) for n in range(args.batches)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(args.batches))

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                t = time.perf_counter()
                conn.request("POST", "/api/v1/events", body=bodies[n], headers=headers)
                response = conn.getresponse()
                payload = response.read()
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if response.status != 202:
                        errors.append(f"{response.status} {payload[:200]!r}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        events = args.batches * args.size
        latencies.sort()
        print(f"backend: {backend_name(url)}; gunicorn workers: {args.workers}; clients: {args.clients}")
        print(f"{events} events in {args.batches} batches of {args.size}: {elapsed:.2f} s → {events / elapsed:,.0f} events/s")
        print(f"batch latency: median {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; errors: {len(errors)}")
        for error in errors[:3]:
            print("  ", error)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
