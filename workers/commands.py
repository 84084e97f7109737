"""The commands that run autofunnel's long-lived processes: `run`, `web`, `worker`, `scheduler`.

They belong to this shell, not to `autofunnel.cli`, because they start Celery and the
processes; the `autofunnel` command finds them through the `autofunnel.commands` entry
points in pyproject.toml, so nothing under autofunnel/ imports this package.
"""

from __future__ import annotations

import sys

import click

from autofunnel.cli import State, friendly_errors, pass_state
from workers.processes import run_all, run_scheduler_process, run_worker, serve_web


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port of the web app and the API; also of the links in emails when AUTOFUNNEL_BASE_URL is not set.")
@pass_state
@friendly_errors
def run(state: State, host: str, port: int) -> None:
    """Everything on one machine: migrations, then web, a worker and the scheduler until Ctrl-C."""
    sys.exit(run_all(state.settings, host, port))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@pass_state
@friendly_errors
def web(state: State, host: str, port: int) -> None:
    """The web app alone (API, public links, admin). In production run it under gunicorn instead."""
    serve_web(state.settings, host, port)


@click.command()
@click.option("--concurrency", type=int, help="Sending processes (default: one per CPU core).")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]), help="Celery pool.")
@pass_state
@friendly_errors
def worker(state: State, concurrency: int | None, pool: str) -> None:
    """A Celery worker sending the emails the scheduler hands out; run as many as you like."""
    run_worker(state.settings, concurrency=concurrency, pool=pool)


@click.command()
@pass_state
@friendly_errors
def scheduler(state: State) -> None:
    """Scheduler passes every AUTOFUNNEL_SCHEDULER_INTERVAL seconds: due steps decided, emails handed out, lost work swept up."""
    run_scheduler_process(state.settings)
