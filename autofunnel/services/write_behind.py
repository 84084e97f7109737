"""Writes gathered in memory and made in batches, by the web process between requests.

An open pixel is fetched far more often than anything else and each fetch
changes little; recording each one in its own request took three transactions
(the delivery read, the whole event recording, the first-open mark) and
serialised a busy web process on the database's write lock. Gathering them
for a second and writing the lot with one `record_events` costs the request
nothing but a list append.

The write is made by whichever request finds one due, after its answer has
gone out (`flush_if_due`), and by a background thread only when no request
comes to do it. A thread writing beside the requests made the two take turns
at the GIL at every socket call: in one gunicorn worker that cost 309 µs of CPU
an open in the thread, three times what the same batches cost written inline.

What can be lost: the items gathered since the last write when the process
dies without a chance to write them (SIGKILL, out of memory, power loss) — at
most `interval` seconds' worth. A normal stop (SIGTERM to gunicorn or to
`autofunnel web`/`run`, Ctrl-C) writes them first: `close()` runs at interpreter
exit. While the database cannot be written, up to `max_pending` items wait and
are retried; beyond that the oldest are dropped, and each drop is logged.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import OperationalError

from autofunnel.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE = (OperationalError, DatabaseUnavailableError)
"""The database is down or busy: the batch is kept and tried again."""


class WriteBehind(Generic[T]):
    """Items `add`ed from any thread, written by `write` in batches of at most `batch` every `interval` seconds.

    A caller that can spare the time after answering calls `flush_if_due`; the
    thread writes what waited longer than `interval` with nobody to write it. It starts with the first item in each process (so a web app built
    before gunicorn forks its workers starts it in each worker, not in the
    master) and is a daemon: `close()`, also registered with `atexit`, writes
    what is left.
    """

    def __init__(self, write: Callable[[list[T]], None], interval: float, *, batch: int = 1000, max_pending: int = 100_000) -> None:
        self._write = write
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.dropped = 0
        self._failed = False
        self._last_write = time.monotonic()

    def add(self, item: T) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked after items or a thread were made: this process starts afresh
                self._items.clear()
                self._thread = None
                self._pid = os.getpid()
            if len(self._items) >= self.max_pending:
                self._items.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("%d tracked opens/clicks dropped: the database has not taken them and %d are waiting", self.dropped, self.max_pending)
            self._items.append(item)
            if self._thread is None:
                self._start()

    def pending(self) -> int:
        return len(self._items)

    def due(self) -> bool:
        """Whether a write is due: a whole batch gathered, or items waiting since `interval` after the last write."""
        return bool(self._items) and (len(self._items) >= self.batch or time.monotonic() - self._last_write >= self.interval)

    def flush_if_due(self) -> None:
        """Write now, in the calling thread, if a write is due and none is under way (else return at once)."""
        if self._failed or not self.due() or not self._writing.acquire(blocking=False):
            return
        try:
            self._flush()
        finally:
            self._writing.release()

    def flush(self) -> int:
        """Write everything gathered so far; the number written. A batch the database refuses
        for being unavailable goes back in front, to be tried again."""
        with self._writing:
            return self._flush()

    def _flush(self) -> int:
        written = 0
        try:
            while True:
                with self._lock:
                    chunk = [self._items.popleft() for _ in range(min(self.batch, len(self._items)))]
                if not chunk:
                    return written
                try:
                    self._write(chunk)
                except RETRYABLE:
                    log.warning("could not write %d tracked opens/clicks; kept to try again", len(chunk), exc_info=True)
                    with self._lock:
                        self._items.extendleft(reversed(chunk))
                    self._failed = True
                    return written
                except Exception:
                    # Not the database being away: trying again would fail the same way forever.
                    log.exception("dropped %d tracked opens/clicks that could not be written", len(chunk))
                    continue
                written += len(chunk)
                self._failed = False
        finally:
            self._last_write = time.monotonic()

    def close(self) -> None:
        """Stop the thread and write what is left (at exit, or when the runtime is closed)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=30)
        atexit.unregister(self.close)
        if self._pid == os.getpid():
            self.flush()

    def _start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="autofunnel-write-behind", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval / 4)
            self._wake.clear()
            if self._stop.is_set() or self.due():
                self.flush()
            if self._failed:  # the database is away: wait a whole interval, however many items come
                self._stop.wait(self.interval)
