"""Real servers and processes a test starts and stops itself.

The chaos test restarts PostgreSQL and Redis under running workers; doing that to
the shared servers would break every other test's connections, so it gets its own:
a PostgreSQL cluster made with `initdb` in a temporary folder and a `redis-server`
on a free port, both on 127.0.0.1, both gone when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], *, timeout: float, every: float = 0.1, what: str = "condition") -> Any:
    """Poll `condition` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root; CI runs as root, a developer usually does not."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PrivatePostgres:
    """A throw-away PostgreSQL 15 cluster on a free port, with trust auth on loopback."""

    def __init__(self) -> None:
        # Its own folder under /tmp, not pytest's: as root, the server runs as `postgres`,
        # which cannot enter pytest's root-only temporary folders.
        self.folder = Path(tempfile.mkdtemp(prefix="autofunnel-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.log = self.folder / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://autofunnel@127.0.0.1:{self.port}/autofunnel"

    def start(self) -> None:
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.folder, "postgres", "postgres")
            subprocess.run(
                _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "autofunnel", "--auth=trust", "-E", "UTF8", "--no-sync"]),
                check=True, capture_output=True,
            )
        self._ctl("start", "-w", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off")
        exists = subprocess.run(
            _as_postgres([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "autofunnel", "-d", "postgres",
                          "-tAc", "SELECT 1 FROM pg_database WHERE datname='autofunnel'"]),
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if not exists:
            subprocess.run(
                _as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "autofunnel", "autofunnel"]),
                check=True, capture_output=True,
            )

    def restart(self) -> None:
        """A fast restart: every connection is cut, as when a server is restarted in production."""
        self._ctl("restart", "-w", "-m", "fast", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self) -> None:
        if self.data.exists():
            self._ctl("stop", "-w", "-m", "immediate", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _ctl(self, action: str, *options: str, check: bool = True) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), action, *options]),
            check=check, capture_output=True,
        )


class PrivateRedis:
    """A `redis-server` without persistence on a free port: a restart loses every queued message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer")
        client.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class Part:
    """One `autofunnel` process (worker, scheduler, web, run) in its own process group."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args, self.env, self.cwd, self.log_path = args, env, cwd, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Part:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autofunnel", *self.args], env=self.env, cwd=self.cwd,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        """kill -9 of the whole process group: the parent and every pool child, mid-work."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any AUTOFUNNEL_* variable, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFUNNEL_")}
    env.update({f"AUTOFUNNEL_{key.upper()}": value for key, value in settings.items()})
    return env
