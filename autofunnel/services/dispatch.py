"""The scheduler as a long-running loop: passes of `tick` and `sweep`, with every
queued email's id handed to the broker after its transaction commits.

The broker is reached only through `HandOut` (a function taking a batch of
delivery ids) and `QueueDepth`, so this module knows nothing of Celery: the
worker shell supplies both. Failures of the database or the broker end one
pass, never the loop: the next pass picks up where the database says things are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from autofunnel.services.runtime import Runtime
from autofunnel.services.optin import opt_in_pass
from autofunnel.services.scheduler import BATCH, fold_report_tallies, tick
from autofunnel.services.sweep import sweep

log = logging.getLogger(__name__)

TASK_BATCH = 50
"""Delivery ids per broker message: a Celery task costs ~2 ms, an email's whole budget,
so one task carries many emails and one SMTP connection serves them all."""

MAX_QUEUED_TASKS = 400
"""Broker messages (of TASK_BATCH emails) past which a pass stops deciding due steps: 20,000
emails, tens of seconds of sending, about a megabyte of Redis. A wave of a million due leads
waits in the database, where the schedule lives, not as 20,000 messages in Redis."""

FOLD_EVERY = 60.0
"""Seconds between folds of the report's tally rows (see `services/tallies.py`)."""

OPT_IN_EVERY = 60.0
"""Seconds between two double opt-in chores (confirmation reminders due, never-confirmed leads erased)."""

HandOut = Callable[[list[int]], None]
QueueDepth = Callable[[], int]


@dataclass
class PassStats:
    due: int = 0
    handed_out: int = 0
    retries: int = 0
    lost: int = 0
    interrupted: int = 0


def in_batches(ids: Sequence[int], size: int = TASK_BATCH) -> list[list[int]]:
    return [list(ids[start:start + size]) for start in range(0, len(ids), size)]


def scheduler_pass(rt: Runtime, hand_out: HandOut, queue_depth: QueueDepth, *, batch: int = BATCH) -> PassStats:
    """One pass: due steps decided and their emails handed out batch by batch, until the broker
    holds MAX_QUEUED_TASKS messages; then lost work swept up."""
    stats = PassStats()

    def hand_out_batch(ids: list[int]) -> None:
        for chunk in in_batches(ids):
            hand_out(chunk)
        stats.handed_out += len(ids)

    report = tick(rt, batch=batch, on_batch=hand_out_batch, keep_going=lambda: _has_room(queue_depth))
    stats.due = report.enrollments
    swept = sweep(rt, now=rt.clock.now(), broker_empty=_is_empty(queue_depth))
    stats.retries, stats.lost, stats.interrupted = len(swept.retries), len(swept.lost), swept.interrupted
    if swept.lost:
        log.warning("%d queued email(s) were lost by the broker; handing them out again", len(swept.lost))
    hand_out_batch(swept.retries + swept.lost)
    return stats


def _has_room(queue_depth: QueueDepth) -> bool:
    """A broker that cannot say its depth gets more work: handing it out fails by itself if it is down."""
    try:
        return queue_depth() < MAX_QUEUED_TASKS
    except Exception:
        return True


def _is_empty(queue_depth: QueueDepth) -> bool:
    try:
        return queue_depth() == 0
    except Exception as exc:  # a broker that cannot say is not known to be empty
        log.warning("cannot read the broker's queue depth: %s", exc)
        return False


def run_scheduler(rt: Runtime, hand_out: HandOut, queue_depth: QueueDepth, *, stop: threading.Event, interval: float) -> None:
    """Passes every `interval` seconds until `stop` is set; an outage costs passes, never the loop.

    Every `FOLD_EVERY` seconds a pass also folds the report's tallies, so a report
    adds up about one row per figure and day whatever the traffic.
    """
    failing = False
    next_fold = time.monotonic() + FOLD_EVERY
    next_chores = time.monotonic()
    while not stop.is_set():
        try:
            rt.reload_project()
            if time.monotonic() >= next_chores:
                opt_in_pass(rt)  # its emails are queued rows: the sweep below hands them out
                next_chores = time.monotonic() + OPT_IN_EVERY
            stats = scheduler_pass(rt, hand_out, queue_depth)
            if time.monotonic() >= next_fold:
                fold_report_tallies(rt)
                next_fold = time.monotonic() + FOLD_EVERY
        except (SQLAlchemyError, OSError, ConnectionError) as exc:
            if not failing:
                log.error("scheduler pass failed, trying again every %.1f s: %s", interval, str(exc).splitlines()[0])
            failing = True
        except Exception as exc:
            if type(exc).__module__.startswith(("kombu", "redis", "celery", "amqp")):
                if not failing:
                    log.error("the broker did not take the work, trying again every %.1f s: %s", interval, exc)
                failing = True
            else:
                raise
        else:
            if failing:
                log.info("scheduler passes work again")
            failing = False
            if stats.due or stats.handed_out or stats.interrupted:
                log.info("pass: %d due, %d email(s) handed out (%d retries, %d lost), %d interrupted",
                         stats.due, stats.handed_out, stats.retries, stats.lost, stats.interrupted)
        stop.wait(interval)
