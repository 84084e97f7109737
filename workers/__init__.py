"""The Celery shell: the app, its one task, the worker and scheduler processes, `run`.

Nothing under autofunnel/ imports this package: the `autofunnel` command finds its
commands (`workers.commands`) through entry points, and services know nothing of
Celery (the scheduler loop takes a hand-out function). Tasks carry ids of committed
deliveries, never delays (`eta`/`countdown` are not used): the schedule lives in the
database.

`celery -A workers worker` finds the app as `workers.app`, made on first use from
the same settings as every autofunnel command (AUTOFUNNEL_* and autofunnel.toml in
AUTOFUNNEL_PROJECT_DIR); `autofunnel worker` is the usual way to start one.
"""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    """`workers.app`: the Celery app of this configuration, made once, only when asked for."""
    global _app
    if name != "app":
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    if _app is None:
        from autofunnel.config import load_settings
        from workers.tasks import make_app

        _app = make_app(load_settings())
    return _app
