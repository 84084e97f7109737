"""Exactly once through a worker killed with -9, a Redis restart and a PostgreSQL restart.

Real processes: one scheduler and two workers (`python -m autofunnel …`), on a
PostgreSQL cluster and a Redis server of this test's own (so restarting them
breaks no other test), sending to a real SMTP sink. 1000 leads are due at once;
AUTOFUNNEL_SEND_RATE (kept in Redis) spreads the wave over ~15 s so every blow
lands mid-run. Counted at the sink: no lead gets the email twice, and a lead
without it has a delivery that ended `failed: interrupted` (cut between claim
and record; at most once wins, never a blind re-send).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from autofunnel.clock import SystemClock
from autofunnel.config import load_settings
from autofunnel.services.database import upgrade_database
from autofunnel.services.leads import subscribe
from autofunnel.services.inputs import parse_subscribe
from autofunnel.services.runtime import Runtime
from autofunnel.store.db import normalize_url
from autofunnel.store.models import Delivery
from services_at_hand import Part, PrivatePostgres, PrivateRedis, clean_environment, wait_until
from smtp_sink import SmtpSink

LEADS = 1000

FUNNEL = """\
funnel: launch
title: Launch day
from: "Team <team@shop.example>"
stages:
  - stage: lead
    steps:
      - send: hello
"""

HELLO = """\
---
subject: "Hello {{ lead.first_name }}"
---
<p>Hi {{ lead.first_name }}, <a href="https://shop.example/">the shop is open</a>.</p>
"""


def _project(folder: Path) -> Path:
    (folder / "funnels").mkdir(parents=True)
    (folder / "templates" / "launch").mkdir(parents=True)
    (folder / "funnels" / "launch.yml").write_text(FUNNEL)
    (folder / "templates" / "launch" / "hello.html").write_text(HELLO)
    return folder


@pytest.mark.postgres
def test_every_lead_gets_the_email_exactly_once_through_kills_and_restarts(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    postgres, redis = PrivatePostgres(), PrivateRedis()
    parts: list[Part] = []
    postgres.start()
    redis.start()
    try:
        project = _project(tmp_path / "shop")
        env = clean_environment(
            database_url=postgres.url, broker_url=redis.url, smtp_url=smtp_sink.url(),
            secret_key="chaos-secret-key-0123456789", base_url="http://shop.test",
            delivery_lease="8", scheduler_interval="0.5", send_rate="70",
        )
        upgrade_database(postgres.url)
        runtime = Runtime.open(load_settings(project, environ=env), SystemClock())
        try:
            now = runtime.clock.now()
            for number in range(LEADS):
                lead = parse_subscribe({"email": f"lead{number}@chaos.example", "funnel": "launch", "first_name": f"L{number}"}, now)
                subscribe(runtime, lead, consent={"source": "chaos test"})
        finally:
            runtime.close()

        def start(name: str, *args: str) -> Part:
            part = Part(list(args), env=env, cwd=project, log=tmp_path / f"{name}.log").start()
            parts.append(part)
            return part

        def sent() -> int:
            return len(smtp_sink.messages)

        start("scheduler", "scheduler")
        first = start("worker-a", "worker", "--concurrency", "2")
        start("worker-b", "worker", "--concurrency", "2")

        wait_until(lambda: sent() >= 150, timeout=90, what="150 emails before the kill")
        first.kill()
        start("worker-c", "worker", "--concurrency", "2")
        wait_until(lambda: sent() >= 400, timeout=90, what="400 emails before the Redis restart")
        redis.restart()
        wait_until(lambda: sent() >= 650, timeout=90, what="650 emails before the PostgreSQL restart")
        postgres.restart()

        engine = create_engine(normalize_url(postgres.url), poolclass=NullPool)

        seen: list[object] = []

        def finished() -> dict[str, int] | None:
            try:
                with engine.connect() as connection:
                    counts = dict(connection.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
            except Exception as exc:  # the server is restarting
                seen.append(exc)
                return None
            seen.append(counts)
            return counts if sum(counts.values()) == LEADS and not {"queued", "sending"} & set(counts) else None

        try:
            statuses = wait_until(finished, timeout=90, every=0.5, what="every delivery to end")
        except AssertionError:
            import redis as redis_client

            depth = redis_client.Redis.from_url(redis.url).llen("autofunnel")
            raise AssertionError(
                f"deliveries never all ended; last seen: {seen[-1] if seen else None}; {depth} batch(es) in the queue; "
                f"{len(smtp_sink.messages)} emails received; logs in {tmp_path}"
            ) from None
        with engine.connect() as connection:
            interrupted = {
                row.to_address for row in connection.execute(
                    select(Delivery.to_address).where(Delivery.status == "failed", Delivery.reason.like("interrupted%"))
                )
            }
        engine.dispose()
    finally:
        logs = "\n".join(f"--- {part.log_path.name}\n{part.output()[-3000:]}" for part in parts)
        for part in parts:
            part.stop()
        redis.stop()
        postgres.stop()

    received = Counter(address for message in smtp_sink.messages for address in message.recipients)
    duplicates = {address: count for address, count in received.items() if count > 1}
    everyone = {f"lead{number}@chaos.example" for number in range(LEADS)}
    missing = everyone - set(received)
    print(
        f"\nchaos: {LEADS} leads; statuses {statuses}; received {sum(received.values())} emails, "
        f"{len(duplicates)} duplicates, {len(missing)} without an email ({len(interrupted)} interrupted)"
    )
    assert not duplicates, (duplicates, logs)
    assert set(statuses) <= {"sent", "failed"}, (statuses, logs)
    assert statuses.get("failed", 0) == len(interrupted), "every failure is an interruption, not an error"
    assert missing <= interrupted, (sorted(missing - interrupted)[:10], logs)
    assert statuses.get("sent", 0) == len(set(received) - interrupted), "every email recorded sent reached the server"
    assert set(received) <= everyone
