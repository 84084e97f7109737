"""SMTP sinks for the sending benchmarks, each run as its own process, and their ceilings.

    python bench/lean_smtp_sink.py --port 2525                   # lean asyncio sink until Ctrl-C
    python bench/lean_smtp_sink.py --port 2526 --kind aiosmtpd   # aiosmtpd sink (what the tests use)
    python bench/lean_smtp_sink.py --ceiling                      # messages/s each sink takes from smtplib
    python bench/lean_smtp_sink.py --ceiling --messages 20000 --repeat 3

Why a sink of our own: aiosmtpd costs ~1.25 ms of CPU a message, more than the
whole budget of an email at 1,000/s, so a benchmark against it measures aiosmtpd.
The lean sink speaks just enough SMTP for smtplib (EHLO/HELO, MAIL, RCPT, DATA
with dot-unstuffing, RSET, NOOP, QUIT) over asyncio protocols and keeps only counts.

Both kinds answer a non-standard `XCNT` command with `250 <messages> <recipients>`,
so a benchmark in another process reads the count over the same port
(`sink_count(port)`); both print their totals when stopped (SIGTERM / Ctrl-C),
and `--print-every S` prints the count every S seconds while it changes.

`--ceiling` starts each kind as a subprocess (so its CPU is not the client's) and
sends `--messages` 3 kB messages from one smtplib connection: the messages/s
printed is the most the sink can take from one sending process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

MESSAGE = (
    b"From: bench <bench@sink.example>\r\nTo: lead <lead@sink.example>\r\nSubject: hello\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b".a line starting with a dot, stuffed by smtplib\r\n" * 60
)


@dataclass
class Counts:
    """What a sink received; read over SMTP with XCNT."""

    messages: int = 0
    recipients: int = 0
    connections: int = 0
    data_bytes: int = 0

    def line(self) -> str:
        return f"{self.messages} message(s), {self.recipients} recipient(s), {self.connections} connection(s), {self.data_bytes} bytes"


EHLO_REPLY = b"250-lean-sink\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"


class LeanSmtp(asyncio.Protocol):
    """One client connection: commands line by line, or message data up to the lone dot."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.in_data = False
        self.recipients = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counts.connections += 1
        transport.write(b"220 lean-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                if not self._take_message(replies):
                    break
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            replies.append(self._command(line))
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def _take_message(self, replies: list[bytes]) -> bool:
        """Consume one message if its terminating dot has arrived; False when more bytes are needed."""
        if self.buffer.startswith(b".\r\n"):
            body, self.buffer = b"", self.buffer[3:]
        else:
            end = self.buffer.find(b"\r\n.\r\n")
            if end < 0:
                return False
            body, self.buffer = self.buffer[:end + 2], self.buffer[end + 5:]
        body = body.replace(b"\r\n..", b"\r\n.")
        if body.startswith(b".."):
            body = body[1:]
        self.in_data = False
        self.counts.messages += 1
        self.counts.recipients += self.recipients
        self.counts.data_bytes += len(body)
        self.recipients = 0
        replies.append(b"250 2.0.0 OK: queued\r\n")
        return True

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO_REPLY
        if verb in (b"HELO", b"NOOP"):
            return b"250 lean-sink\r\n"
        if verb in (b"MAIL", b"RSET"):
            self.recipients = 0
            return b"250 2.1.0 OK\r\n"
        if verb == b"RCPT":
            self.recipients += 1
            return b"250 2.1.5 OK\r\n"
        if verb == b"DATA":
            if not self.recipients:
                return b"503 5.5.1 RCPT first\r\n"
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"XCNT":
            return f"250 {self.counts.messages} {self.counts.recipients}\r\n".encode()
        if verb == b"QUIT":
            assert self.transport is not None
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
            return b""
        return b"500 5.5.2 command not recognized\r\n"

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def aiosmtpd_factory(counts: Counts) -> asyncio.Protocol:
    """aiosmtpd's SMTP with a handler that counts, plus the XCNT command; imported only for this kind."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class CountingHandler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            counts.messages += 1
            counts.recipients += len(envelope.rcpt_tos)
            counts.data_bytes += len(envelope.original_content or b"")
            return "250 2.0.0 OK: queued"

    class CountingSmtp(SMTP):
        async def smtp_XCNT(self, arg: str) -> None:
            await self.push(f"250 {counts.messages} {counts.recipients}")

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            counts.connections += 1
            super().connection_made(transport)

    return CountingSmtp(CountingHandler(), hostname="aiosmtpd-sink", ident="aiosmtpd-sink")


async def serve(kind: str, host: str, port: int, print_every: float | None) -> Counts:
    """Serve until SIGTERM or SIGINT; the counts at that moment."""
    counts = Counts()
    loop = asyncio.get_running_loop()
    factory = (lambda: LeanSmtp(counts)) if kind == "lean" else (lambda: aiosmtpd_factory(counts))
    server = await loop.create_server(factory, host, port, reuse_address=True, backlog=512)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"{kind} sink listening on {host}:{port}", flush=True)
    async with server:
        last = -1
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=print_every or 3600)
            except TimeoutError:
                if counts.messages != last:
                    last = counts.messages
                    print(f"{time.time():.3f} {counts.line()}", flush=True)
    return counts


def sink_count(port: int, host: str = "127.0.0.1") -> int:
    """Messages the sink on this port has received so far (one short connection, raw socket: cheap)."""
    with socket.create_connection((host, port), timeout=5) as connection:
        reader = connection.makefile("rb")
        reader.readline()
        connection.sendall(b"XCNT\r\n")
        answer = reader.readline().split()
        connection.sendall(b"QUIT\r\n")
        return int(answer[1])


def start_sink(kind: str, port: int) -> subprocess.Popen[bytes]:
    """The sink as its own process (own process group), once it answers XCNT."""
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--kind", kind, "--port", str(port)],
        start_new_session=True, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            sink_count(port)
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"the {kind} sink did not start on port {port}") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ceiling(kind: str, messages: int) -> float:
    """Messages/s one smtplib connection gets through a freshly started sink of this kind."""
    port = free_port()
    process = start_sink(kind, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local") as client:
            client.ehlo()
            started = time.perf_counter()
            for _ in range(messages):
                client.sendmail("bench@sink.example", ["lead@sink.example"], MESSAGE)
            elapsed = time.perf_counter() - started
        received = sink_count(port)
        if received != messages:
            raise RuntimeError(f"{kind} sink counted {received} of {messages}")
    finally:
        stop_process(process)
    return messages / elapsed


def print_ceilings(messages: int, repeat: int) -> None:
    rates: dict[str, float] = {}
    for kind in ("lean", "aiosmtpd"):
        runs = []
        for _ in range(repeat):
            runs.append(ceiling(kind, messages))
            print(f"  {kind:9} run: {runs[-1]:7.0f} msg/s   load average {os.getloadavg()[0]:.2f}", flush=True)
        rates[kind] = statistics.median(runs)
    for kind, rate in rates.items():
        print(f"{kind:9} ceiling (median of {repeat}): {rate:7.0f} msg/s, {1000 / rate:.3f} ms per message (client + sink), "
              f"x{rates['lean'] / rate:.2f} slower than lean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("lean", "aiosmtpd"), default="lean")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--print-every", type=float, default=None, help="print the count every S seconds while it changes")
    parser.add_argument("--ceiling", action="store_true", help="measure both kinds' messages/s from one smtplib client")
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.ceiling:
        print_ceilings(args.messages, args.repeat)
        return
    counts = asyncio.run(serve(args.kind, args.host, args.port, args.print_every))
    print(f"{args.kind} sink stopped: {counts.line()}", flush=True)


if __name__ == "__main__":
    main()
