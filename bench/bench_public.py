"""Public doors through gunicorn -w 2: open-pixel, click and subscribe-form requests per second.

    pip install '.[bench]'
    python bench/bench_public.py                      # SQLite, server-less broker
    python bench/bench_public.py --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench \\
        --broker-url redis://127.0.0.1:6379/5
    python bench/bench_public.py --batch 0            # each open and click written in its own request
    python bench/bench_public.py --client wrk --clients 4 --threads 4 --ceiling
        # opens and clicks from wrk (a C client: apt install wrk), and a bare WSGI app's figure beside them

Sets up the starter project with `--leads` confirmed leads whose welcome email was sent
(`autofunnel tick`, into .eml files), starts gunicorn as the README recommends, then
fetches `/t/o/<token>` and `/t/c/<token>` of those emails, and posts the yoga funnel's
subscribe form `/f/yoga` with new addresses, from `--clients` client processes (each a
few threads on raw sockets, a new connection per request as a mail client's fetch is,
and as gunicorn's sync workers close them anyway) for `--seconds` each, with a
browser's User-Agent. The form's per-IP limit is lifted for the run (every request
comes from 127.0.0.1). Prints requests/s and answers that were not 200/302/303.

Then stops gunicorn with SIGTERM, as a deploy does, and counts what was written: every
open and click answered must be an `opened`/`clicked` event (they are gathered in
memory and written in batches; a normal stop writes what is left), every form a lead.
The client shares the machine's cores with the server: the figures are the pair's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import func, select

from autofunnel.clock import SystemClock
from autofunnel.config import load_settings
from autofunnel.services.credentials import create_api_key
from autofunnel.store.db import Database, backend_name
from autofunnel.store.models import Delivery, Event, Lead
from autofunnel.tokens import Tokens
from bench_ingest import free_port
from common import fresh_project

SECRET = "bench-secret-0123456789"
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15"
GOOD = (b"HTTP/1.1 200", b"HTTP/1.1 302", b"HTTP/1.1 303")


def exchange(port: int, request: bytes) -> bytes:
    """One request on a new connection; the whole answer (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        parts = []
        while chunk := sock.recv(65536):
            parts.append(chunk)
    return b"".join(parts)


def wait_up(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            exchange(port, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start")


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: {BROWSER}\r\nConnection: close\r\n\r\n".encode()


def form_post(email: str) -> bytes:
    body = urlencode({"email": email, "first_name": "Reader", "consent": "yes", "website": ""}).encode()
    head = (f"POST /f/yoga HTTP/1.1\r\nHost: bench\r\nUser-Agent: {BROWSER}\r\nConnection: close\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def hammer(port: int, kind: str, paths: list[str], seconds: float, threads: int, client: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    totals = [0, 0]
    lock = threading.Lock()
    requests = [get(path) for path in paths]
    stop = time.perf_counter() + seconds

    def run(thread: int) -> None:
        n, wrong = 0, 0
        i = thread * 1000
        while time.perf_counter() < stop:
            request = form_post(f"form{client}-{thread}-{n}@example.com") if kind == "form" else requests[i % len(requests)]
            answer = exchange(port, request)
            wrong += not answer.startswith(GOOD)
            n += 1
            i += 7
        with lock:
            totals[0] += n
            totals[1] += wrong

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((totals[0], totals[1]))


def measure(port: int, kind: str, paths: list[str], seconds: float, clients: int, threads: int) -> tuple[int, float, int]:
    """(requests answered, requests/s, answers not 200/302/303)."""
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=hammer, args=(port, kind, paths[k::clients] or paths, seconds, threads, k, out)) for k in range(clients)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    done = sum(r[0] for r in results)
    return done, done / elapsed, sum(r[1] for r in results)


WRK_SCRIPT = """
local paths, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], {["User-Agent"] = "%s", ["Connection"] = "close"})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d\\n", summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration))
end
""" % BROWSER


def measure_wrk(port: int, paths: list[str], seconds: float, connections: int, work: Path) -> tuple[int, float, int]:
    """The same as measure, from wrk (a C client: one thread, an event loop, far less CPU than Python's per request)."""
    script, listing = work / "bench.lua", work / "paths.txt"
    script.write_text(WRK_SCRIPT)
    listing.write_text("\n".join(paths) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script), f"http://127.0.0.1:{port}", "--", str(listing)],
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    done, bad_status, socket_errors, micros = (int(x) for x in line.split()[1:])
    return done, done / (micros / 1e6), bad_status + socket_errors


def ceiling(args: argparse.Namespace, paths: list[str], work: Path) -> float:
    """Requests/s of bare_pixel.py under gunicorn with the same workers and client, right now."""
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                             "--chdir", str(Path(__file__).parent), "bare_pixel:app"])
    try:
        wait_up(port)
        if args.client == "wrk":
            return measure_wrk(port, paths, args.seconds, args.clients * args.threads, work)[1]
        return measure(port, "open", paths, args.seconds, args.clients, args.threads)[1]
    finally:
        bare.send_signal(signal.SIGTERM)
        bare.wait(60)


def morning_zone() -> str:
    """A time zone where it is about 10:00 now, inside the example's send window whenever the bench runs."""
    ahead = (10 - time.gmtime().tm_hour + 12) % 24 - 12
    return f"Etc/GMT{-ahead:+d}" if ahead else "Etc/UTC"


def cpu_seconds(master: int) -> float:
    """CPU time (user + system) of gunicorn's master and workers so far, from /proc (Linux)."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return float("nan")
    total = 0
    for pid in [str(master), *children]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def count(db: Database, query: object) -> int:
    with db.read() as session:
        return int(session.scalar(query) or 0)  # type: ignore[call-overload]


def drained(db: Database, event_type: str, expected: int, limit: float = 120) -> float:
    """Seconds until `expected` events of the type are in the database: whether the batched writes keep up."""
    started = time.perf_counter()
    while count(db, select(func.count()).select_from(Event).where(Event.type == event_type)) < expected:
        if time.perf_counter() - started > limit:
            return float("inf")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--broker-url", help="redis://…: the broker and the form limiter's counts (default: server-less)")
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client", choices=("python", "wrk"), default="python",
                        help="wrk: opens and clicks from wrk (apt install wrk), --clients x --threads connections; forms stay Python")
    parser.add_argument("--ceiling", action="store_true",
                        help="after the opens, the same client against a bare WSGI app (bare_pixel.py) under the same gunicorn: the ratio")
    parser.add_argument("--batch", default="1", help="AUTOFUNNEL_TRACKING_BATCH_SECONDS (0: each open written in its request)")
    args = parser.parse_args()
    work, project, url = fresh_project("af-public-", args.database_url)
    env = {**os.environ, "AUTOFUNNEL_PROJECT_DIR": str(project), "AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": SECRET,
           "AUTOFUNNEL_SMTP_URL": f"file://{work}/outbox", "AUTOFUNNEL_TRACKING_BATCH_SECONDS": args.batch,
           "AUTOFUNNEL_FORM_RATE_LIMIT": "1000000 per minute"}
    if args.broker_url:
        env["AUTOFUNNEL_BROKER_URL"] = args.broker_url
    db = Database.from_url(url)
    _, key = create_api_key(db, SystemClock(), "bench")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", "autofunnel.web:create_app()"],
        env=env,
    )
    try:
        wait_up(port)
        zone = morning_zone()
        for n in range(args.leads):
            body = json.dumps({"email": f"reader{n}@example.com", "funnel": "yoga", "timezone": zone}).encode()
            exchange(port, f"POST /api/v1/subscribe HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        body = json.dumps([{"type": "confirmed", "email": f"reader{n}@example.com"} for n in range(args.leads)]).encode()
        exchange(port, f"POST /api/v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        subprocess.run([sys.executable, "-m", "autofunnel", "tick"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "autofunnel", "tick"], env=env, check=True, stdout=subprocess.DEVNULL)
        with db.read() as session:
            deliveries = list(session.scalars(select(Delivery.id).where(Delivery.status == "sent")))
        if not deliveries:
            raise SystemExit("no email was sent to open (outside the example's send window?); nothing to measure")
        tokens = Tokens(load_settings(Path(project), environ=env).secret_key)
        opens = [f"/t/o/{tokens.sign('open', [d])}" for d in deliveries]
        clicks = [f"/t/c/{tokens.sign('click', [d, 'https://yoga.example/guide'])}" for d in deliveries]
        leads_before = count(db, select(func.count()).select_from(Lead))
        time.sleep(11)  # past the 10 s after sending in which opens count as machines'
        print(f"backend: {backend_name(url)}; broker: {args.broker_url or 'server-less'}; gunicorn workers: {args.workers}; "
              f"client: {args.client}, {args.clients} x {args.threads} {'connections' if args.client == 'wrk' else 'threads'}; {len(deliveries)} emails; {os.cpu_count()} cores; "
              f"tracking batch: {args.batch} s; load average before: {os.getloadavg()[0]:.1f}")
        answered: dict[str, int] = {}
        written = {"open": "opened", "click": "clicked"}
        for kind, name, paths in (("open", "open pixel /t/o/", opens), ("click", "click /t/c/", clicks), ("form", "subscribe form POST /f/yoga", [""])):
            cpu = cpu_seconds(server.pid)
            if args.client == "wrk" and kind != "form":
                done, rate, wrong = measure_wrk(port, paths, args.seconds, args.clients * args.threads, work)
            else:
                done, rate, wrong = measure(port, kind, paths, args.seconds, args.clients, args.threads)
            cpu = cpu_seconds(server.pid) - cpu
            answered[kind] = done - wrong
            print(f"{name}: {rate:,.0f} requests/s over {args.seconds:.0f} s ({done:,} requests); answers not 200/302/303: {wrong}; "
                  f"server CPU {cpu * 1e6 / max(done, 1):,.0f} µs a request (its batched writes included) = {done / cpu if cpu else 0:,.0f} "
                  f"requests per CPU-second")
            if kind in written:
                print(f"  all written {drained(db, written[kind], answered[kind]):.1f} s after the last answer")
            if kind == "open" and args.ceiling:
                bare = ceiling(args, opens, work)
                print(f"  ceiling: a bare WSGI app answering the GIF under the same gunicorn and client: {bare:,.0f} requests/s; "
                      f"the open pixel is {rate / bare:.0%} of it")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    opened = count(db, select(func.count()).select_from(Event).where(Event.type == "opened"))
    clicked = count(db, select(func.count()).select_from(Event).where(Event.type == "clicked"))
    leads = count(db, select(func.count()).select_from(Lead)) - leads_before
    print(f"written after gunicorn's SIGTERM: opened events {opened:,} of {answered['open']:,} opens answered; "
          f"clicked events {clicked:,} of {answered['click']:,} clicks; new leads {leads:,} of {answered['form']:,} forms")
    db.dispose()


if __name__ == "__main__":
    main()
