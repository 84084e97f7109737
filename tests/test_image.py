"""The production image, proved without a Docker engine (none runs here).

The Dockerfile does two things that matter: `pip install` of the build context and
`pip install gunicorn`; docker-compose.yml then runs four commands from that image
against PostgreSQL and Redis. This test does the same outside Docker: it builds the
wheel from exactly the files `.dockerignore` lets into the context, installs it into a
new virtualenv that has never seen this checkout, and runs the compose services'
own commands, read from docker-compose.yml, with the compose environment pointed at
this run's PostgreSQL, Redis and the SMTP sink. A subscription through the web
service must come out of the SMTP sink as the confirmation email, sent by the worker
on the scheduler's word, and the web service's healthcheck command must pass.

It needs the package registry (pip fetches the dependencies and the build backend),
which CI and this machine have, and it runs on the PostgreSQL + Redis run only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEST_BROKER_URL
from docker_context import copy_build_context
from services_at_hand import free_port, http_status, wait_until
from smtp_sink import SmtpSink

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
INSTALL_TIMEOUT = 600


def _dockerfile_gunicorn_requirement() -> str:
    found = re.search(r'pip install --no-cache-dir "(gunicorn[^"]*)"', (REPO / "Dockerfile").read_text())
    assert found, "the Dockerfile installs gunicorn"
    return found.group(1)


def _command(service: str, port: int) -> list[str]:
    """A compose service's command, with the web bind moved from 0.0.0.0:8000 to loopback."""
    return [part.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for part in COMPOSE["services"][service]["command"]]


def _healthcheck(port: int) -> list[str]:
    test = COMPOSE["services"]["web"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in test[1:]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel built from the Docker build context, plus gunicorn."""
    root = tmp_path_factory.mktemp("image")
    context, wheels, venv = root / "context", root / "wheels", root / "venv"
    sent = copy_build_context(REPO, context)
    assert "pyproject.toml" in sent and not [name for name in sent if name.startswith(("tests/", "bench/"))]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(context)],
                   check=True, timeout=INSTALL_TIMEOUT, capture_output=True)
    (wheel,) = wheels.glob("autofunnel-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(wheel), _dockerfile_gunicorn_requirement()], check=True, timeout=INSTALL_TIMEOUT, capture_output=True)
    return venv


def _environment(venv: Path, project: Path, **settings: str) -> dict[str, str]:
    """The compose file's environment for the app services, with this run's servers in it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AUTOFUNNEL_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AUTOFUNNEL_PROJECT_DIR"] = str(project)  # the Dockerfile's ENV, where compose mounts the project
    expected = set(COMPOSE["x-autofunnel-env"])
    given = {f"AUTOFUNNEL_{key.upper()}": value for key, value in settings.items()}
    assert expected <= set(given), f"the test sets every variable compose sets: {sorted(expected - set(given))}"
    env.update(given)
    return env


class Service:
    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def output(self) -> str:
        return f"--- {self.name}\n{self.log.read_text(errors='replace')}"


def _post(url: str, body: object, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_compose_services_run_from_the_wheel_against_postgresql_and_redis(
    installed: Path, database_url: str, smtp_sink: SmtpSink, tmp_path: Path,
) -> None:
    assert TEST_BROKER_URL.startswith("redis://"), "the PostgreSQL run has Redis as its broker"
    project = tmp_path / "shop"
    port = free_port()
    broker = re.sub(r"/\d*$", "", TEST_BROKER_URL.rstrip("/")) + "/13"  # a database of its own: no other test's tasks
    env = _environment(
        installed, project,
        database_url=database_url, broker_url=broker, smtp_url=smtp_sink.url(),
        secret_key="a-test-secret-of-32-characters!!", base_url=f"http://127.0.0.1:{port}",
        mail_from="Anna <anna@yoga.example>",
    )
    where = subprocess.run(["python", "-c", "import autofunnel; print(autofunnel.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed)), f"the clean venv imports its own copy, not this checkout's: {where}"
    subprocess.run(["autofunnel", "init", str(project)], env=env, cwd=tmp_path, check=True, capture_output=True)

    migrate = subprocess.run(_command("migrate", port), env=env, cwd=project, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    services = [Service(name, _command(name, port), env, project, tmp_path / f"{name}.log") for name in ("web", "worker", "scheduler")]
    try:
        logs = lambda: "\n".join(service.output() for service in services)  # noqa: E731
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=90, what=f"/healthz\n{logs()}")
        health = subprocess.run(_healthcheck(port), env=env, cwd=project, capture_output=True, timeout=30)
        assert health.returncode == 0, health.stderr

        key = subprocess.run(["autofunnel", "apikey", "create"], env=env, cwd=project, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        answer = _post(f"http://127.0.0.1:{port}/api/v1/subscribe", {"email": "ida@reader.example", "funnel": "yoga", "first_name": "Ida"},
                       {"Authorization": f"Bearer {key}"})
        assert answer["status"] == "pending"
        wait_until(lambda: smtp_sink.messages, timeout=90, what=f"the confirmation email\n{logs()}")
        (confirmation,) = smtp_sink.messages
        assert confirmation.recipients == ("ida@reader.example",)
        assert confirmation.message["Subject"] == "Please confirm your subscription to Yoga for beginners"
        assert f"http://127.0.0.1:{port}/confirm/" in confirmation.message.get_body(("html",)).get_content()
        assert all(service.process.poll() is None for service in services), logs()
    finally:
        for service in services:
            service.stop()
