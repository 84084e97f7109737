"""A real SMTP server on loopback for tests: aiosmtpd in a background thread.

    with SmtpSink() as sink:                       # 127.0.0.1, a free port
        send(..., port=sink.port)
        assert sink.messages[0].message["Subject"] == "Hi"

or, as a fixture (function-scoped, started and stopped around each test):

    def test_something(smtp_sink: SmtpSink) -> None: ...

To use the fixture from any test module, register this module once in
tests/conftest.py:  `pytest_plugins = ["smtp_sink"]`  (tests/ has no
__init__.py, and pytest puts tests/ itself on sys.path for its conftest, so the
module's import name is `smtp_sink`; `tests.smtp_sink` only resolves when the
repository root happens to be on sys.path too, which a non-editable install
run by the venv's `pytest` script does not give). A test module can also
import the fixture directly: `from smtp_sink import smtp_sink`.

What the sink can do:
- `.messages`: every accepted message (`ReceivedMessage`: envelope, raw bytes,
  parsed `email` object); `.clear()` empties it.
- `.connections`: how many SMTP connections clients opened.
- `.answer(recipient, code, text, at="rcpt")`: answer `code` for that
  recipient, at RCPT (e.g. 550 for bounce@…, 451 for later@…) or at the end
  of DATA (`at="data"`, e.g. 554 spam). `.drop(recipient)` closes the
  connection after that recipient's DATA without answering (a dropped
  connection mid-batch). `.close_connections()` closes every open connection
  (a server's idle timeout); `.answer_next_mail_with_421()` answers the next
  MAIL with 421 and closes (Postfix's way of saying the same).
- `tls="starttls"` (STARTTLS offered and required) or `tls="tls"` (implicit TLS
  from the first byte, as on port 465), with a self-signed certificate made at
  start; `.client_ssl_context()` trusts it.
- `pipelining=True`: PIPELINING offered (RFC 2920), as Postfix and the big
  relays do, so clients send MAIL, RCPT and DATA in one write.
- `users={"name": "password"}`: AUTH PLAIN/LOGIN offered (and required before
  MAIL with STARTTLS); the credentials clients presented are in `.logins`.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class ReceivedMessage:
    envelope_from: str
    recipients: tuple[str, ...]
    raw: bytes
    message: EmailMessage = field(repr=False)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd reads commands line by line, so a pipelined group works
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        if self.sink._closing_answers:
            self.sink._closing_answers -= 1
            assert server.transport is not None
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply is written
            return "421 4.4.2 sink.test Error: timeout exceeded"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        answer = self.sink._answers.get(("rcpt", address.lower()))
        if answer is not None:
            if address.lower() in self.sink._kept_after_refusal:
                envelope.rcpt_tos.append(address)
            if address.lower() in self.sink._closing_after_refusal:
                # The answer, then the close, before aiosmtpd reads a pipelined DATA; what
                # aiosmtpd writes after this goes nowhere.
                assert server.transport is not None
                server.transport.write(f"{answer}\r\n".encode())
                server.transport.close()
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipients = tuple(envelope.rcpt_tos)
        for recipient in recipients:
            if recipient.lower() in self.sink._drops:
                assert isinstance(server.transport, asyncio.Transport)
                server.transport.abort()
                return "421 4.4.2 closing"
            answer = self.sink._answers.get(("data", recipient.lower()))
            if answer is not None:
                return answer
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.sink._lock:
            self.sink.messages.append(ReceivedMessage(str(envelope.mail_from), recipients, raw, parsed))
        return "250 2.0.0 OK: queued"


class _Controller(Controller):
    """aiosmtpd's Controller on a socket bound beforehand (so port 0 works), counting connections."""

    def __init__(self, sink: SmtpSink, listener: socket.socket, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), hostname="127.0.0.1", port=listener.getsockname()[1], **kwargs)
        self._sink = sink
        self._listener = listener

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._listener, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        server = super().factory()
        with self._sink._lock:
            self._sink.connections += 1
            self._sink._servers.append(server)
        return server


class SmtpSink:
    """An SMTP server on 127.0.0.1 that keeps what it receives. See the module docstring."""

    def __init__(self, *, tls: str | None = None, users: dict[str, str] | None = None, pipelining: bool = False) -> None:
        if tls not in (None, "starttls", "tls"):
            raise ValueError("tls is None, 'starttls' or 'tls'")
        self.tls = tls
        self.pipelining = pipelining
        self.users = dict(users or {})
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        self.logins: list[tuple[str, str]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.cert_file: Path | None = None
        self._answers: dict[tuple[str, str], str] = {}
        self._drops: set[str] = set()
        self._kept_after_refusal: set[str] = set()
        self._closing_after_refusal: set[str] = set()
        self._closing_answers = 0
        self._servers: list[SMTP] = []
        self._lock = threading.Lock()
        self._controller: _Controller | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None

    # life cycle

    def start(self) -> int:
        """Start listening; returns the port."""
        assert self._controller is None, "already started"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((self.host, 0))
        self.port = listener.getsockname()[1]
        kwargs: dict[str, Any] = {"server_hostname": "sink.test", "ready_timeout": 10.0}
        if self.tls:
            server_context = self._server_ssl_context()
            if self.tls == "starttls":
                kwargs.update(tls_context=server_context, require_starttls=True)
            else:
                kwargs.update(ssl_context=server_context)
        if self.users:
            # aiosmtpd counts only STARTTLS as TLS, and warns (an error under pytest) when
            # AUTH is required without it: so AUTH is required only with STARTTLS, and
            # merely offered otherwise.
            starttls = self.tls == "starttls"
            kwargs.update(authenticator=self._authenticate, auth_required=starttls, auth_require_tls=starttls)
        self._controller = _Controller(self, listener, **kwargs)
        try:
            self._controller.start()
        except BaseException:
            listener.close()
            self._controller = None
            raise
        with self._lock:  # the controller's own start-up probe is no client's connection
            self.connections = 0
            self._servers.clear()
        return self.port

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # behaviour

    def answer(self, recipient: str, code: int, text: str, *, at: str = "rcpt") -> None:
        """Answer `code text` when `recipient` is given at RCPT, or at the end of its DATA."""
        if at not in ("rcpt", "data"):
            raise ValueError("at is 'rcpt' or 'data'")
        self._answers[(at, recipient.lower())] = f"{code} {text}"

    def refuse_and_close(self, recipient: str, code: int, text: str) -> None:
        """Answer `code text` at RCPT and close the connection, as Exim's `drop` does."""
        self.answer(recipient, code, text)
        self._closing_after_refusal.add(recipient.lower())

    def refuse_but_take_data(self, recipient: str, code: int, text: str) -> None:
        """Answer `code text` at RCPT yet keep the recipient, so a pipelined DATA gets 354:
        a broken server, which must then get no message data."""
        self.answer(recipient, code, text)
        self._kept_after_refusal.add(recipient.lower())

    def accept(self, recipient: str) -> None:
        """Take this recipient's mail normally again (undo `answer` and `drop`)."""
        self._answers.pop(("rcpt", recipient.lower()), None)
        self._answers.pop(("data", recipient.lower()), None)
        self._drops.discard(recipient.lower())
        self._kept_after_refusal.discard(recipient.lower())
        self._closing_after_refusal.discard(recipient.lower())

    def drop(self, recipient: str) -> None:
        """Cut the connection, without a reply, once that recipient's message data arrived."""
        self._drops.add(recipient.lower())

    def answer_next_mail_with_421(self) -> None:
        """Answer the next MAIL FROM with 421 and close that connection, as Postfix does
        when a connection sat idle past its timeout."""
        self._closing_answers += 1

    def close_connections(self) -> None:
        """Close every open connection from the server side, like an idle timeout."""
        controller = self._controller
        assert controller is not None, "not started"
        done = threading.Event()

        def close_all() -> None:
            for server in self._servers:
                if server.transport is not None:
                    server.transport.close()
            done.set()

        controller.loop.call_soon_threadsafe(close_all)
        done.wait(5)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.logins.clear()
            self.connections = 0
        self._answers.clear()
        self._drops.clear()
        self._kept_after_refusal.clear()
        self._closing_after_refusal.clear()
        self._closing_answers = 0

    def url(self, scheme: str | None = None, *, user: str | None = None, password: str | None = None) -> str:
        """An AUTOFUNNEL_SMTP_URL for this sink (credentials as given: quote them yourself)."""
        scheme = scheme or {None: "smtp", "starttls": "smtp+starttls", "tls": "smtps"}[self.tls]
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{credentials}{self.host}:{self.port}"

    # TLS

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this sink's self-signed certificate (and nothing else)."""
        assert self.cert_file is not None, "the sink was not started with tls"
        return ssl.create_default_context(cafile=str(self.cert_file))

    def _server_ssl_context(self) -> ssl.SSLContext:
        self._tempdir = tempfile.TemporaryDirectory(prefix="smtp-sink-")
        cert_file, key_file = make_self_signed_certificate(Path(self._tempdir.name), self.host)
        self.cert_file = cert_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert_file), str(key_file))
        return context

    # AUTH

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8")
        password = auth_data.password.decode("utf-8")
        with self._lock:
            self.logins.append((login, password))
        return AuthResult(success=self.users.get(login) == password, handled=False)


def make_self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `host` (an IP or a name) and its key, as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "sink-cert.pem"
    key_file = directory / "sink-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A plain SMTP sink on 127.0.0.1 offering PIPELINING, as production servers do, started for one test."""
    with SmtpSink(pipelining=True) as sink:
        yield sink


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def either_smtp_sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """`smtp_sink`, once without and once with PIPELINING, for tests of the SMTP exchange itself."""
    sink = SmtpSink(pipelining=request.param)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


__all__ = ["ReceivedMessage", "SmtpSink", "either_smtp_sink", "make_self_signed_certificate", "smtp_sink"]
