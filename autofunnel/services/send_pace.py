"""AUTOFUNNEL_SEND_RATE: at most that many emails a second, across every worker.

Every email takes the next free slot of one shared schedule (`next free slot =
max(next free, now) + 1/rate`) and waits for its slot before it is handed to
SMTP. Strict spacing, no burst: in any one-second window at most `rate` (+1)
emails leave, which is what a mail provider's per-second limit means. The
shared slot lives in Redis when the broker is Redis (one round trip, atomic in
a Lua script), else in the `send_pace` row of the database, so several workers
on several machines keep one pace either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import select

from autofunnel.services.database import through_outage
from autofunnel.store.db import Database
from autofunnel.store.models import SendPace
from autofunnel.store.queries import insert_ignoring, is_postgres

PACE_NAME = "email"
DATABASE_PATIENCE = 30.0
REDIS_PATIENCE = 30.0
"""Seconds a worker waits for Redis to come back before giving up its batch (the sweep hands it out again)."""

Sleep = Callable[[float], None]
Now = Callable[[], float]


class Pace(Protocol):
    limited: bool
    """Whether emails may have to wait for their turn (a worker then records each one before waiting)."""

    def wait_turn(self) -> float:
        """Block until this process may hand one email to SMTP; return the seconds waited."""


class Unlimited:
    """No AUTOFUNNEL_SEND_RATE: every email goes as fast as SMTP takes it."""

    limited = False

    def wait_turn(self) -> float:
        return 0.0


class DatabasePace:
    """The shared slot in a database row, taken under a row lock (a write lock on SQLite)."""

    limited = True

    def __init__(self, db: Database, rate: float, *, sleep: Sleep = time.sleep, now: Now = time.time) -> None:
        self.db, self.interval, self.sleep, self.now = db, 1.0 / rate, sleep, now

    def wait_turn(self) -> float:
        """A busy SQLite lock or a database restart is waited out, not a failed batch."""
        now, slot = through_outage(self._take_slot, for_seconds=DATABASE_PATIENCE, what="taking a send slot")
        return _wait(slot - now, self.sleep)

    def _take_slot(self) -> tuple[float, float]:
        with self.db.transaction() as session:
            now = self.now()
            session.execute(insert_ignoring(session, SendPace.__table__, ("name",)).values(name=PACE_NAME, next_free_at=_moment(now)))
            stmt = select(SendPace).where(SendPace.name == PACE_NAME)
            if is_postgres(session):
                stmt = stmt.with_for_update()
            pace = session.scalars(stmt).one()
            slot = max(pace.next_free_at.timestamp(), now)
            pace.next_free_at = _moment(slot + self.interval)
        return now, slot


_REDIS_SLOT = """
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.6f', slot + tonumber(ARGV[2])), 'EX', 3600)
return string.format('%.6f', slot - tonumber(ARGV[1]))
"""


class RedisPace:
    """The shared slot in one Redis key, read and moved in one atomic script."""

    limited = True

    def __init__(self, url: str, rate: float, *, sleep: Sleep = time.sleep, now: Now = time.time) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.script = self.client.register_script(_REDIS_SLOT)
        self.interval, self.sleep, self.now = 1.0 / rate, sleep, now

    def wait_turn(self) -> float:
        """A Redis restart costs a few seconds of waiting here, not a failed batch."""
        import redis

        pause, waited = 0.2, 0.0
        while True:
            try:
                delay = float(self.script(keys=["autofunnel:send-pace"], args=[f"{self.now():.6f}", f"{self.interval:.9f}"]))
                return waited + _wait(delay, self.sleep)
            except (redis.ConnectionError, redis.TimeoutError):
                if waited >= REDIS_PATIENCE:
                    raise
                self.sleep(pause)
                waited += pause
                pause = min(pause * 2, 2.0)


def pace_for(rate: float | None, broker_url: str | None, db: Database) -> Pace:
    """The pace this configuration asks for: none, Redis-shared, or database-shared."""
    if rate is None:
        return Unlimited()
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        return RedisPace(broker_url, rate)
    return DatabasePace(db, rate)


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _wait(delay: float, sleep: Sleep) -> float:
    if delay > 0:
        sleep(delay)
        return delay
    return 0.0
