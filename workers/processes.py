"""The long-running processes: worker, scheduler, web, and `run`, which starts all three.

Each part is its own process, started the same way alone (`autofunnel worker`
on several machines) or together (`autofunnel run` on one), so the one-machine
setup runs exactly the code production runs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from autofunnel.config import Settings
from autofunnel.domain.model import Flow
from autofunnel.services.broker import QUEUE, broker_for, queue_depth

log = logging.getLogger("autofunnel")


_ANNOUNCED = "_AUTOFUNNEL_SETUP_WARNED"
"""Set by `run` for its children: it printed the setup warnings once already."""


def _announce(settings: Settings, flows: Mapping[str, Flow]) -> None:
    """The setup warnings (`validate`'s), logged once per start: by `run`, or by a part started alone."""
    from autofunnel.services.setup_checks import announce_setup_warnings

    if not os.environ.get(_ANNOUNCED):
        announce_setup_warnings(settings, flows)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s")


def run_worker(settings: Settings, *, concurrency: int | None, pool: str) -> None:
    """A Celery worker on the delivery queue; refuses to start on a broken project or an old schema."""
    from autofunnel.services.runtime import Runtime
    from workers.tasks import make_app

    runtime = Runtime.open(settings)
    runtime.close()
    setup_logging()
    _announce(settings, runtime.project.flows)
    app = make_app(settings)
    argv = [
        "worker", "--loglevel=INFO", f"--pool={pool}", "-Q", QUEUE, "-n", f"autofunnel-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


def run_scheduler_process(settings: Settings) -> None:
    """Scheduler passes every AUTOFUNNEL_SCHEDULER_INTERVAL seconds until SIGTERM or Ctrl-C."""
    from autofunnel.services.dispatch import run_scheduler
    from autofunnel.services.runtime import Runtime
    from workers.tasks import hand_out_with, make_app

    setup_logging()
    runtime = Runtime.open(settings)
    app = make_app(settings)
    stop = threading.Event()
    _stop_on_signals(lambda: stop.set())
    log.info("scheduler: a pass every %.1f s, broker %s", settings.scheduler_interval, runtime.broker.describe())
    try:
        run_scheduler(runtime, hand_out_with(app), lambda: queue_depth(runtime.broker), stop=stop, interval=settings.scheduler_interval)
    finally:
        runtime.close()
    log.info("scheduler stopped")


def serve_web(settings: Settings, host: str, port: int) -> None:
    """The web app on a threaded WSGI server: enough for one machine; production runs gunicorn."""
    from werkzeug.serving import make_server

    from autofunnel.web import create_app

    setup_logging()
    app = create_app(settings)
    _announce(settings, app.extensions["autofunnel"].project.flows)
    server = make_server(host, port, app, threaded=True)
    _stop_on_signals(lambda: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("web: listening on http://%s:%d", host, server.server_port)
    server.serve_forever()
    log.info("web stopped")


def _stop_on_signals(stop: object) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop()  # type: ignore[operator]

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


PARTS = ("web", "worker", "scheduler")


def run_all(settings: Settings, host: str, port: int) -> int:
    """Migrations, then web, one worker and the scheduler as child processes, until Ctrl-C.

    The worker sends from one pool child, which Celery replaces past 250 MB
    (`worker_max_memory_per_child` applies to pool children only): SQLite's page cache
    and memory map grow with the database, and a replaced child starts small again.

    A part that dies stops the others and `run` exits non-zero: a half-running
    system that looks alive is worse than one that says it stopped.
    """
    from autofunnel.services.database import upgrade_database
    from autofunnel.services.project import load_project

    setup_logging()
    status = upgrade_database(settings.resolved_database_url)
    log.info("database at %s (%s); broker: %s", status.revision, status.backend, broker_for(settings.resolved_broker_url).describe())
    environ = {**os.environ, "AUTOFUNNEL_PROJECT_DIR": str(Path(settings.project_dir).resolve()), _ANNOUNCED: "1"}
    if "base_url" not in settings.sources:  # links in emails point at the port this run listens on
        settings = replace(settings, base_url=f"http://localhost:{port}")
        environ["AUTOFUNNEL_BASE_URL"] = settings.base_url
    _announce(settings, load_project(Path(settings.project_dir)).flows)
    base = [sys.executable, "-m", "autofunnel"]
    commands = {
        "web": [*base, "web", "--host", host, "--port", str(port)],
        "worker": [*base, "worker", "--concurrency", "1", "--pool", "prefork"],
        "scheduler": [*base, "scheduler"],
    }
    children = {name: subprocess.Popen(command, env=environ) for name, command in commands.items()}
    stopping = threading.Event()
    _stop_on_signals(lambda: stopping.set())
    exit_code = 0
    while not stopping.is_set():
        dead = [(name, child.returncode) for name, child in children.items() if child.poll() is not None]
        if dead:
            name, code = dead[0]
            log.error("%s stopped (exit %s); stopping the others", name, code)
            exit_code = 1
            break
        stopping.wait(0.5)
    _stop_children(children, grace=max(15.0, settings.delivery_lease + 5))
    return exit_code


def _stop_children(children: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM, then wait: a worker first finishes the batch it is sending (Celery's
    warm shutdown); a part still running after the grace period is killed, and an
    email it was sending then ends `interrupted`."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, grace)
            child.kill()
            child.wait()
    log.info("stopped")
