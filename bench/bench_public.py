"""Public links in emails through gunicorn -w 2: open-pixel and click requests per second.

    pip install '.[bench]'
    python bench/bench_public.py                      # SQLite
    python bench/bench_public.py --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench

Sets up the starter project with `--leads` confirmed leads whose welcome email was sent
(`autofunnel tick`, into .eml files), starts gunicorn as the README recommends, then
fetches `/t/o/<token>` and `/t/c/<token>` of those emails from `--clients` client
processes (each a few threads, a new connection per request as gunicorn's sync workers
close them) for `--seconds` each, with a browser's User-Agent. Prints requests/s and the
share of answers that were not 200/302. Form submissions (`/f/…`) are not measured: no
form route exists in this branch.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from autofunnel.clock import SystemClock
from autofunnel.config import load_settings
from autofunnel.services.credentials import create_api_key
from autofunnel.store.db import Database, backend_name
from autofunnel.store.models import Delivery
from autofunnel.tokens import Tokens
from bench_ingest import free_port
from common import fresh_project

SECRET = "bench-secret-0123456789"
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15"


def wait_up(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start")


def hammer(port: int, paths: list[str], seconds: float, threads: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    done = [0]
    bad = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run(offset: int) -> None:
        n, wrong = 0, 0
        i = offset
        while time.perf_counter() < stop:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", paths[i % len(paths)], headers={"User-Agent": BROWSER})
            response = conn.getresponse()
            response.read()
            conn.close()
            wrong += response.status not in (200, 302)
            n += 1
            i += 7
        with lock:
            done[0] += n
            bad[0] += wrong

    workers = [threading.Thread(target=run, args=(k * 1000,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((done[0], bad[0]))


def measure(port: int, paths: list[str], seconds: float, clients: int, threads: int) -> tuple[float, int]:
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=hammer, args=(port, paths[k::clients], seconds, threads, out)) for k in range(clients)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    return sum(r[0] for r in results) / elapsed, sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work, project, url = fresh_project("af-public-", args.database_url)
    env = {**os.environ, "AUTOFUNNEL_PROJECT_DIR": str(project), "AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": SECRET,
           "AUTOFUNNEL_SMTP_URL": f"file://{work}/outbox"}
    db = Database.from_url(url)
    _, key = create_api_key(db, SystemClock(), "bench")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", "autofunnel.web:create_app()"],
        env=env,
    )
    try:
        wait_up(port)
        import json

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for n in range(args.leads):  # Asia/Tokyo: inside the example's send window on a European morning
            conn.request("POST", "/api/v1/subscribe", body=json.dumps({"email": f"reader{n}@example.com", "funnel": "yoga", "timezone": "Asia/Tokyo"}), headers=headers)
            conn.getresponse().read()
        events = [{"type": "confirmed", "email": f"reader{n}@example.com"} for n in range(args.leads)]
        conn.request("POST", "/api/v1/events", body=json.dumps(events), headers=headers)
        conn.getresponse().read()
        subprocess.run([sys.executable, "-m", "autofunnel", "tick"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "autofunnel", "tick"], env=env, check=True, stdout=subprocess.DEVNULL)
        with db.read() as session:
            deliveries = list(session.scalars(select(Delivery.id).where(Delivery.status == "sent")))
        if not deliveries:
            raise SystemExit("no email was sent to open (outside the example's send window?); nothing to measure")
        tokens = Tokens(load_settings(Path(project), environ=env).secret_key)
        opens = [f"/t/o/{tokens.sign('open', [d])}" for d in deliveries]
        clicks = [f"/t/c/{tokens.sign('click', [d, 'https://yoga.example/guide'])}" for d in deliveries]
        time.sleep(11)  # past the 10 s after sending in which opens count as machines'
        print(f"backend: {backend_name(url)}; gunicorn workers: {args.workers}; client processes: {args.clients} x {args.threads} threads; "
              f"{len(deliveries)} emails; {os.cpu_count()} cores")
        for name, paths in (("open pixel /t/o/", opens), ("click /t/c/", clicks)):
            rate, wrong = measure(port, paths, args.seconds, args.clients, args.threads)
            print(f"{name}: {rate:,.0f} requests/s over {args.seconds:.0f} s; answers not 200/302: {wrong}")
        print("form submissions /f/: not measured, no form route in this branch")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        db.dispose()


if __name__ == "__main__":
    main()
