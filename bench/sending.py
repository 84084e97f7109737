"""Shared helpers of the sending benchmarks (bench_send, bench_latency, bench_scheduler_idle):
a project whose yoga funnel sends at once, due leads written fast, the real
processes started in their own process groups, and what the kernel and Redis
say about their CPU and memory.

Every process started here is stopped by `Processes` (SIGTERM to its group,
SIGKILL after a grace period), also when a benchmark fails half-way.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import fresh_project
from lean_smtp_sink import free_port, sink_count, stop_process
from sqlalchemy import func, insert, select

from autofunnel.config import load_settings
from autofunnel.services.enrollments import new_enrollment
from autofunnel.services.project import load_project
from autofunnel.store.db import Database
from autofunnel.store.models import Delivery, Enrollment, Lead

PG_URL = "postgresql://autofunnel:autofunnel@127.0.0.1:5432/autofunnel_bench"
SECRET = "bench-secret-0123456789"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

LAYOUTS = {
    "2x1": [["worker", "--concurrency", "1"], ["worker", "--concurrency", "1"]],
    "1x2": [["worker", "--concurrency", "2"]],
    "1solo": [["worker", "--pool", "solo"]],
    "2xdefault": [["worker"], ["worker"]],
}
"""Two workers with one pool child each, or one worker with two: the two ways to use 2 cores;
and one solo-pool worker, the one `autofunnel run` starts (its memory is never recycled by Celery)."""


def load() -> str:
    """The 1-minute load average, printed with every figure: the machine is shared."""
    return f"load {os.getloadavg()[0]:.2f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# the project and its due leads -----------------------------------------------------------


def sending_project(prefix: str, database_url: str | None) -> tuple[Path, Path, str]:
    """fresh_project, with the yoga funnel sending its welcome to every due lead at once:
    no double opt-in, no holdout, no send window, quiet days or frequency cap."""
    work, project, url = fresh_project(prefix, database_url)
    path = project / "funnels" / "yoga.yml"
    kept = [
        line for line in path.read_text().splitlines()
        if not line.startswith(("send_window:", "quiet_days:", "frequency_cap:"))
    ]
    text = "\n".join(kept) + "\n"
    text = re.sub(r"^double_opt_in: true", "double_opt_in: false", text, flags=re.MULTILINE)
    text = re.sub(r"^holdout: 10%", "holdout: 0%", text, flags=re.MULTILINE)
    path.write_text(text)
    return work, project, url


def fill_due(db: Database, project: Path, count: int, due_at: Callable[[int], datetime], *, first_id: int = 1) -> None:
    """`count` active leads, each enrolled in the yoga lead stage the way `subscribe` does it
    (`new_enrollment`: first step, due at `due_at(i)`), written with Core in chunks."""
    flow = load_project(project).flows["yoga"]
    entered = datetime.now(UTC)
    chunk = 10000
    with db.engine.begin() as connection:
        for low in range(first_id, first_id + count, chunk):
            ids = range(low, min(first_id + count, low + chunk))
            connection.execute(insert(Lead), [
                {"id": i, "email": f"lead{i}@bench.example", "first_name": f"Lead{i}", "fields": {}, "tags": [],
                 "status": "active", "created_at": entered, "updated_at": entered, "timezone": None}
                for i in ids
            ])
            connection.execute(insert(Enrollment), [
                new_enrollment(i, flow, "lead", run=1, at=entered, now=due_at(i), version_id=None, event_id=None)
                for i in ids
            ])


def delivery_statuses(db: Database) -> dict[str, int]:
    with db.engine.connect() as connection:
        rows = connection.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
    return {status: count for status, count in rows}


# processes ---------------------------------------------------------------------------------


def autofunnel_env(project: Path, **settings: str) -> dict[str, str]:
    """This environment without any AUTOFUNNEL_* of the caller, plus the project and `settings`
    (AUTOFUNNEL_<NAME>: value); unset settings take autofunnel's defaults."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFUNNEL_")}
    env["AUTOFUNNEL_PROJECT_DIR"] = str(project)
    env.update({f"AUTOFUNNEL_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class Processes:
    """Processes started in their own groups, logging to files in `logs`; all stopped on exit."""

    logs: Path
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.logs)
        log.close()
        self.started[name] = process
        return process

    def autofunnel(self, name: str, arguments: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "autofunnel", *arguments], env)

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Stop a process started elsewhere (a sink) with the others."""
        self.started[name] = process

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.started.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"stopped early: {dead}; logs in {self.logs}")

    def stop_one(self, name: str) -> None:
        stop_process(self.started.pop(name))

    def stop(self) -> None:
        for process in reversed(list(self.started.values())):
            stop_process(process)

    def log_problems(self) -> dict[str, int]:
        """Lines with ERROR, CRITICAL or Traceback per log file: every one deserves a look."""
        found: dict[str, int] = {}
        for path in sorted(self.logs.glob("*.log")):
            bad = sum(1 for line in path.read_text(errors="replace").splitlines() if re.search(r"ERROR|CRITICAL|Traceback", line))
            if bad:
                found[path.name] = bad
        return found


@contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    group = Processes(logs)
    try:
        yield group
    finally:
        group.stop()


def start_redis(group: Processes) -> str:
    """A private redis-server (no persistence) on a free port, so its memory is ours alone; its URL."""
    port = free_port()
    group.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    wait_until(lambda: redis_memory(port) is not None, 10, "redis-server to answer")
    return f"redis://127.0.0.1:{port}/0"


def redis_memory(port: int) -> dict[str, int] | None:
    """used_memory and used_memory_rss in bytes, or None while the server does not answer."""
    import redis

    try:
        client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            info = client.info("memory")
        finally:
            client.close()
    except redis.RedisError:
        return None
    return {"used_memory": int(info["used_memory"]), "used_memory_rss": int(info["used_memory_rss"])}


def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def wait_until(ready: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)


def wait_for_log(group: Processes, name: str, pattern: str, timeout: float) -> None:
    """Until the process's log holds `pattern` (a start-up line), failing if it stops first."""
    path = group.logs / f"{name}.log"

    def seen() -> bool:
        group.check_alive()
        return path.exists() and pattern in path.read_text(errors="replace")

    wait_until(seen, timeout, f"{name} to log {pattern!r}", every=0.1)


# what the kernel says ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def children(pid: int) -> list[int]:
    """Direct children of a process (Celery's pool processes of a worker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def sending_pids(group: Processes) -> dict[str, int]:
    """The processes that send: each worker's pool children, or the worker itself with the solo pool
    (under `run`, the worker is the child of `run` whose command line says `worker`)."""
    found: dict[str, int] = {}
    for name, process in group.started.items():
        if name.startswith("worker"):
            kids = children(process.pid)
            found.update({f"{name}/child{n}": pid for n, pid in enumerate(kids)} or {name: process.pid})
        elif name == "run":
            for pid in children(process.pid):
                if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found["run/worker"] = pid
    return found


# waiting for the sink, sampling memory on the way -------------------------------------------


@dataclass
class Sample:
    at: float
    sent: int
    rss: dict[str, int]
    redis: dict[str, int] | None


@dataclass
class SinkRun:
    started: float
    first: float | None = None
    done: float | None = None
    samples: list[Sample] = field(default_factory=list)


def watch_sink(group: Processes, port: int, target: int, started: float, *, timeout: float,
               redis_url: str | None = None, sample_every: float = 1.0) -> SinkRun:
    """Poll the sink until `target` messages arrived; note the first one's time and sample
    the senders' RSS (and Redis's memory) about every `sample_every` seconds."""
    run = SinkRun(started)
    next_sample = 0.0
    while True:
        now = time.perf_counter()
        count = sink_count(port)
        if count and run.first is None:
            run.first = now
        if now >= next_sample or count >= target:
            next_sample = now + sample_every
            run.samples.append(Sample(now, count, _rss_of(group), redis_memory(redis_port(redis_url)) if redis_url else None))
        if count >= target:
            run.done = now
            return run
        group.check_alive()
        if now - started > timeout:
            raise TimeoutError(f"{count} of {target} emails at the sink after {timeout:.0f} s; logs in {group.logs}")
        time.sleep(0.1)


def _rss_of(group: Processes) -> dict[str, int]:
    found = {}
    for name, pid in sending_pids(group).items():
        try:
            found[name] = rss_bytes(pid)
        except FileNotFoundError:
            pass
    return found


def settings_for(project: Path, url: str, smtp_url: str, broker_url: str | None = None) -> Any:
    """In-process settings matching what the benchmarked processes get."""
    environ = {"AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": SECRET, "AUTOFUNNEL_SMTP_URL": smtp_url}
    if broker_url:
        environ["AUTOFUNNEL_BROKER_URL"] = broker_url
    return load_settings(project, environ=environ)


def stop_signal_kills_group() -> None:
    """Ctrl-C or SIGTERM on a benchmark raises, so `processes` stops what it started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
