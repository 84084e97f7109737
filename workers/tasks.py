"""The Celery app for one configuration, and the task that sends a batch of deliveries."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals

from autofunnel.config import Settings
from autofunnel.services.broker import QUEUE, broker_for

log = logging.getLogger(__name__)

DELIVER = "autofunnel.deliver"

_runtime: Any = None
_runtime_pid: int | None = None
_opening = threading.Lock()


def make_app(settings: Settings) -> Celery:
    """A Celery app on the configured broker; results are never stored (nobody waits for them)."""
    broker = broker_for(settings.resolved_broker_url)
    app = Celery("autofunnel", set_as_current=False)
    app.conf.update(
        broker_url=broker.kombu_url,
        broker_transport_options=broker.options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_max_memory_per_child=250_000,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=broker.is_redis,
        worker_send_task_events=False,
        enable_utc=True,
    )
    app.conf.autofunnel_settings = settings

    @app.task(name=DELIVER, ignore_result=True)
    def deliver_batch(delivery_ids: list[int]) -> None:
        """Send a batch; every outcome is in the delivery rows, so there is no result to keep."""
        from autofunnel.services.delivery import deliver

        runtime = _worker_runtime(settings)
        runtime.reload_project()
        report = deliver(runtime, delivery_ids)
        if report.sent or report.failed or report.skipped or report.retried:
            log.info("batch of %d: %d sent, %d failed, %d skipped, %d to retry",
                     len(delivery_ids), report.sent, report.failed, report.skipped, report.retried)

    def open_runtime(**_: Any) -> None:
        _worker_runtime(settings)

    signals.worker_process_init.connect(open_runtime, weak=False)
    return app


def _worker_runtime(settings: Settings) -> Any:
    """One Runtime per worker process: opened in each pool child when it starts (never in
    the parent before the fork: database connections must not cross it), or on first
    use under the solo and threads pools."""
    global _runtime, _runtime_pid
    with _opening:
        if _runtime is None or _runtime_pid != os.getpid():
            from autofunnel.services.runtime import Runtime

            _runtime = Runtime.open(settings)
            _runtime_pid = os.getpid()
        return _runtime


def hand_out_with(app: Celery) -> Any:
    """The scheduler's hand-out function: one message per batch of delivery ids."""

    def hand_out(ids: list[int]) -> None:
        app.send_task(
            DELIVER, args=[ids], queue=QUEUE, retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
        )

    return hand_out
