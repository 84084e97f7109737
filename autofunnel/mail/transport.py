"""Handing finished messages over: SMTP, `.eml` files, or memory.

A transport is used for a batch, through one session, so a batch of deliveries
costs one connection (and one TLS handshake and one login):

    transport = transport_from_url(settings.smtp_url, settings.project_dir)
    with transport.session() as session:
        for delivery in batch:
            try:
                session.send(envelope_from, delivery.email, raw_message)
            except DeliveryError as exc:
                ...  # exc.permanent, exc.hard_bounce, exc.code, exc.text, exc.maybe_sent

URLs (`AUTOFUNNEL_SMTP_URL`):

    smtp://user:pass@host:port           plain SMTP, port 25 by default
    smtp+starttls://user:pass@host:port  STARTTLS required, port 587 by default
    smtps://user:pass@host:port          TLS from the first byte, port 465 by default
    file:///abs/dir  file://./relative   one `.eml` file per message (relative to the project),
                                         written to a temporary file, then linked into place

User and password are URL-decoded (`p%40ss` is `p@ss`). Query parameters:
`timeout` (seconds for every socket operation, default 30) and `helo` (the name
given in EHLO, default this machine's name).

Errors are `DeliveryError`s that keep the server's code and text. `permanent`
means sending this message again will fail again (a 5xx answer); transient ones
(4xx, refused or dropped connections, timeouts) may succeed later.
`hard_bounce` marks the recipient-level refusals (550/551/553 to RCPT) after
which the lead should be suppressed. `maybe_sent` marks a failure after the
message's data went out: SMTP cannot tell whether the server took it, so at
most once means it must not be re-sent blindly. `stage` says where it failed:
errors at `connect`, `tls` or `auth` are about the server or the settings
(a wrong password, an untrusted certificate), not about the message or the
lead, and will fail the rest of the batch the same way.

An SMTP session connects on its first message and keeps the connection. If
the connection drops, that message's error is raised and the next message
opens a new connection. A connection the server closed while idle (gone, or
a 421 answer) is noticed at MAIL FROM, before anything of the message is
sent; then the session reconnects and sends at once, which is safe: nothing
was handed over. Every socket operation has the timeout (default 30 s).

With a server that offers PIPELINING (RFC 2920: Postfix, Exim and the big
relays do), MAIL FROM, RCPT TO and DATA go in one write and their answers are
read after it: two round trips an email fewer. The message data follows only
when all three were accepted; a server that answers DATA with 354 after
refusing the sender or the recipient gets the connection closed instead.

`InMemoryTransport` keeps what it is given, for `autofunnel/testing.py` and for
users' own tests of their funnels:

    transport = InMemoryTransport()
    transport.refuse("gone@example.com", 550, "5.1.1 no such user")   # optional
    ...run the code under test with it...
    assert transport.messages[0].recipient == "zoe@example.com"
    assert transport.messages[0].message["Subject"] == "Zoë, your guide is inside"
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import smtplib
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

from autofunnel.errors import ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError

DEFAULT_TIMEOUT = 30.0
_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


_ENVELOPE_ADDRESS = re.compile(r"^[\x21-\x7e]*$")


def _check_envelope(envelope_from: str, recipient: str) -> None:
    """Envelope addresses go into SMTP commands: printable ASCII only, and a recipient."""
    for label, address in (("sender", envelope_from), ("recipient", recipient)):
        if not _ENVELOPE_ADDRESS.match(address) or "<" in address or ">" in address:
            raise PermanentDeliveryError(
                f"the envelope {label} {address!r} cannot be sent (only plain ASCII addresses)",
                stage="mail" if label == "sender" else "rcpt", recipient=recipient,
            )
    if "@" not in recipient:
        raise PermanentDeliveryError(f"{recipient!r} is not an email address", stage="rcpt", recipient=recipient)


def _reply_error(code: int, reply: bytes | str, stage: str, recipient: str | None, *, maybe_sent: bool = False) -> DeliveryError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = " ".join(text.split())
    kind: type[DeliveryError] = PermanentDeliveryError if 500 <= code < 600 else TransientDeliveryError
    where = f" for {recipient}" if recipient and stage == "rcpt" else ""
    return kind(f"SMTP {stage}{where}: {code} {text}".rstrip(), code=code, text=text, stage=stage, recipient=recipient, maybe_sent=maybe_sent)


def _connection_error(exc: BaseException, stage: str, recipient: str | None, *, maybe_sent: bool = False) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_error(exc.smtp_code, exc.smtp_error, stage, recipient, maybe_sent=maybe_sent)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError(f"SMTP {stage}: the server's TLS certificate is not trusted: {exc.verify_message}", stage=stage, recipient=recipient)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError(f"SMTP {stage}: {exc}", stage=stage, recipient=recipient)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TransientDeliveryError(f"SMTP {stage}: timed out", stage=stage, recipient=recipient, maybe_sent=maybe_sent)
    description = str(exc) or type(exc).__name__
    return TransientDeliveryError(f"SMTP {stage}: {description}", stage=stage, recipient=recipient, maybe_sent=maybe_sent)


# The protocol ------------------------------------------------------------------------------


@runtime_checkable
class Session(Protocol):
    def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
        """Hand one message over; raise `DeliveryError` when it was not taken."""


@runtime_checkable
class Transport(Protocol):
    def session(self) -> contextlib.AbstractContextManager[Session]:
        """A session for a batch of messages (one connection, for SMTP)."""


# SMTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTransport:
    """SMTP over one connection per session: plain, STARTTLS (required) or TLS."""

    host: str
    port: int
    security: str = "plain"  # plain | starttls | tls
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    helo: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[SmtpSession]:
        session = SmtpSession(self)
        try:
            yield session
        finally:
            session.close()

    def tls_context(self) -> ssl.SSLContext:
        return self.ssl_context if self.ssl_context is not None else ssl.create_default_context()

    def ehlo_name(self) -> str:
        return self.helo or _local_name()


@lru_cache(maxsize=1)
def _local_name() -> str:
    """This machine's name for EHLO, looked up once (smtplib would ask DNS on every connect)."""
    name = socket.getfqdn()
    return name if name.isascii() and name else "localhost"


class _ServerClosing(Exception):
    """The server answered MAIL with 421: it is closing the connection (often an idle timeout)."""

    def __init__(self, code: int, reply: bytes) -> None:
        super().__init__(code, reply)
        self.code = code
        self.reply = reply


class SmtpSession:
    """One batch's connection: opened on the first message, reopened after a drop."""

    def __init__(self, transport: SmtpTransport) -> None:
        self.transport = transport
        self._connection: smtplib.SMTP | None = None
        self.connections = 0
        """How many connections this session opened (1 for a batch that went well)."""

    def _connect(self) -> smtplib.SMTP:
        settings = self.transport
        connection: smtplib.SMTP | None = None
        stage = "connect"
        try:
            if settings.security == "tls":
                connection = smtplib.SMTP_SSL(
                    settings.host, settings.port, local_hostname=settings.ehlo_name(),
                    timeout=settings.timeout, context=settings.tls_context(),
                )
            else:
                connection = smtplib.SMTP(settings.host, settings.port, local_hostname=settings.ehlo_name(), timeout=settings.timeout)
            connection.ehlo()
            if settings.security == "starttls":
                stage = "tls"
                if not connection.has_extn("starttls"):
                    raise PermanentDeliveryError(
                        f"SMTP tls: {settings.host} does not offer STARTTLS, which smtp+starttls:// requires",
                        stage="tls",
                    )
                code, reply = connection.starttls(context=settings.tls_context())
                if code != 220:
                    raise _reply_error(code, reply, "tls", None)
                connection.ehlo()
            if settings.username is not None:
                stage = "auth"
                connection.login(settings.username, settings.password or "")
        except BaseException as exc:
            if connection is not None:
                _close_quietly(connection)
            if isinstance(exc, (OSError, smtplib.SMTPException, DeliveryError)):
                raise _connection_error(exc, stage, None) from exc
            raise
        self.connections += 1
        return connection

    def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
        """Send one message; raises a `DeliveryError` for this message only."""
        _check_envelope(envelope_from, recipient)
        reused = self._connection is not None
        connection = self._connection or self._connect()
        self._connection = connection
        try:
            in_data = self._envelope(connection, envelope_from, recipient, len(message))
        except (smtplib.SMTPServerDisconnected, ConnectionError, _ServerClosing) as exc:
            self._drop()
            if not reused:
                raise _closed_error(exc, recipient) from exc
            # The server closed the connection while it was idle (or said it would,
            # with 421). Nothing of this message went out, so sending it on a new
            # connection cannot send it twice.
            connection = self._connection = self._connect()
            try:
                in_data = self._envelope(connection, envelope_from, recipient, len(message))
            except (OSError, smtplib.SMTPException, _ServerClosing) as retry_exc:
                self._drop()
                raise _closed_error(retry_exc, recipient) from retry_exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise _connection_error(exc, "mail", recipient) from exc
        try:
            code, reply = _message_data(connection, message) if in_data else connection.data(message)
        except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing sent
            self._reset(connection)
            raise _reply_error(exc.smtp_code, exc.smtp_error, "data", recipient) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise _connection_error(exc, "data", recipient, maybe_sent=True) from exc
        if code != 250:
            self._reset(connection)
            raise _reply_error(code, reply, "data", recipient)

    def _envelope(self, connection: smtplib.SMTP, envelope_from: str, recipient: str, size: int) -> bool:
        """MAIL and RCPT; with a server that offers PIPELINING (RFC 2920) DATA too, the three
        in one write and their answers read after: True when the server took DATA already."""
        options = [f"SIZE={size}"] if connection.has_extn("size") else []
        if connection.has_extn("pipelining"):
            return self._pipelined_envelope(connection, envelope_from, recipient, options)
        code, reply = connection.mail(envelope_from, options)
        if code == 421:
            raise _ServerClosing(code, reply)
        if code != 250:
            self._reset(connection)
            raise _reply_error(code, reply, "mail", recipient)
        code, reply = connection.rcpt(recipient)
        if code not in (250, 251):
            self._reset(connection)
            raise _reply_error(code, reply, "rcpt", recipient)
        return False

    def _pipelined_envelope(self, connection: smtplib.SMTP, envelope_from: str, recipient: str, options: list[str]) -> bool:
        """MAIL, RCPT and DATA in one write, then their three answers; True when all were accepted.

        A connection lost before the first answer is one the server closed while idle,
        as a 421 to MAIL says; lost after it, the first refusal already read (a server
        may refuse a recipient and hang up) is the message's error.
        """
        mail_options = "".join(f" {option}" for option in options)
        connection.send(f"MAIL FROM:{smtplib.quoteaddr(envelope_from)}{mail_options}\r\nRCPT TO:{smtplib.quoteaddr(recipient)}\r\nDATA\r\n")
        replies: list[tuple[int, bytes]] = []
        try:
            replies.append(connection.getreply())
            if replies[0][0] == 421:
                raise _ServerClosing(*replies[0])
            replies.append(connection.getreply())
            replies.append(connection.getreply())
        except (OSError, smtplib.SMTPException) as exc:
            if not replies:
                raise
            self._drop()
            refusal = _first_refusal(replies)
            if refusal is not None:
                raise _reply_error(*refusal[0], refusal[1], recipient) from exc
            raise _connection_error(exc, _PIPELINED_STAGES[len(replies)], recipient) from exc
        refusal = _first_refusal(replies)
        if refusal is None:
            return True
        if replies[2][0] == 354:
            # DATA taken after the sender or the recipient was refused: no message data
            # must follow, so the connection goes, and with it anything the server began.
            self._drop()
        else:
            self._reset(connection)
        raise _reply_error(*refusal[0], refusal[1], recipient)

    def _reset(self, connection: smtplib.SMTP) -> None:
        try:
            connection.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            _close_quietly(self._connection)
            self._connection = None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            _close_quietly(connection)


_PIPELINED_STAGES = ("mail", "rcpt", "data")
_GO_AHEAD = ((250,), (250, 251), (354,))


def _first_refusal(replies: list[tuple[int, bytes]]) -> tuple[tuple[int, bytes], str] | None:
    """The first of pipelined MAIL, RCPT and DATA answers that is not a go-ahead, with its stage."""
    for (code, reply), stage, accepted in zip(replies, _PIPELINED_STAGES, _GO_AHEAD):
        if code not in accepted:
            return (code, reply), stage
    return None


_LINE_STARTING_WITH_A_DOT = re.compile(rb"^\.", re.MULTILINE)


def _message_data(connection: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """The message after a pipelined DATA's 354, dot-stuffed and ended as `smtplib.SMTP.data` does."""
    data = _LINE_STARTING_WITH_A_DOT.sub(b"..", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    connection.send(data + b".\r\n")
    return connection.getreply()


def _closed_error(exc: BaseException, recipient: str) -> DeliveryError:
    if isinstance(exc, _ServerClosing):
        return _reply_error(exc.code, exc.reply, "mail", recipient)
    return _connection_error(exc, "mail", recipient)


def _close_quietly(connection: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        connection.close()


# Files --------------------------------------------------------------------------------------

_MESSAGE_ID_HEADER = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._@+-]")


@dataclass(frozen=True)
class FileTransport:
    """Writes each message to `<directory>/<message-id>.eml`, atomically (temp file + rename).

    The file starts with `Return-Path` and `Delivered-To`, as a mailbox would
    keep them, so the envelope is visible. A second message with the same
    Message-ID is written next to the first as `<message-id>.2.eml`, never
    over it, so a re-send shows.
    """

    directory: Path

    @contextlib.contextmanager
    def session(self) -> Iterator[FileSession]:
        yield FileSession(self.directory)


class FileSession:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
        _check_envelope(envelope_from, recipient)
        try:
            self.write(envelope_from, recipient, message)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write the email to {self.directory}: {exc}", stage="write", recipient=recipient) from exc

    def write(self, envelope_from: str, recipient: str, message: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        header_end = message.find(b"\r\n\r\n")
        match = _MESSAGE_ID_HEADER.search(message, 0, header_end if header_end >= 0 else len(message))
        stem = _UNSAFE_FILE_CHARACTERS.sub("_", match.group(1).decode("ascii", "replace")) if match else ""
        stem = stem[:200] or f"message-{os.urandom(8).hex()}"
        trace = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode("ascii")
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".eml", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(trace)
                out.write(message)
            number = 1
            while True:
                target = self.directory / (f"{stem}.eml" if number == 1 else f"{stem}.{number}.eml")
                try:
                    os.link(temporary, target)  # fails if the name is taken: never overwrite
                except FileExistsError:
                    number += 1
                    continue
                except OSError:  # no hard links on this file system
                    if target.exists():
                        number += 1
                        continue
                    os.replace(temporary, target)
                    return target
                return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


# Memory ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    """One message an `InMemoryTransport` took."""

    envelope_from: str
    recipient: str
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        """The message parsed (policy.default): `["Subject"]`, `.get_body(("plain",))` …"""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class InMemoryTransport:
    """Keeps every message in `.messages` instead of sending it: for tests.

    `refuse(recipient, code, text)` makes sends to that address fail as an SMTP
    server answering `code` to RCPT would (550 → a permanent hard bounce,
    451 → transient). `sessions` counts the sessions opened. Thread-safe.
    """

    def __init__(self) -> None:
        self.messages: list[SentMessage] = []
        self.sessions = 0
        self._refusals: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def refuse(self, recipient: str, code: int = 550, text: str = "5.1.1 no such user") -> None:
        with self._lock:
            self._refusals[recipient.lower()] = (code, text)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self._refusals.clear()
            self.sessions = 0

    def to(self, recipient: str) -> list[SentMessage]:
        """The messages sent to `recipient` (case-insensitive), in order."""
        wanted = recipient.lower()
        with self._lock:
            return [sent for sent in self.messages if sent.recipient.lower() == wanted]

    @contextlib.contextmanager
    def session(self) -> Iterator[InMemorySession]:
        with self._lock:
            self.sessions += 1
        yield InMemorySession(self)

    def _take(self, envelope_from: str, recipient: str, message: bytes) -> None:
        _check_envelope(envelope_from, recipient)
        if not isinstance(message, bytes):
            raise TypeError("a message is bytes, as build_message returns it")
        with self._lock:
            refusal = self._refusals.get(recipient.lower())
            if refusal is None:
                self.messages.append(SentMessage(envelope_from, recipient, message))
                return
        raise _reply_error(refusal[0], refusal[1], "rcpt", recipient)


class InMemorySession:
    def __init__(self, transport: InMemoryTransport) -> None:
        self._transport = transport

    def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
        self._transport._take(envelope_from, recipient, message)


# Configuration -----------------------------------------------------------------------------


def transport_from_url(
    url: str,
    project_dir: Path,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = None,
) -> SmtpTransport | FileTransport:
    """The transport `AUTOFUNNEL_SMTP_URL` names.

    `ssl_context` replaces `ssl.create_default_context()` (tests pass one that
    trusts their self-signed certificate); `timeout` overrides the URL's.
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise ConfigError(f"AUTOFUNNEL_SMTP_URL: expected smtp://, smtp+starttls://, smtps:// or file://, got {url!r}")
    if scheme == "file":
        path_text = unquote(rest.split("?", 1)[0])
        if not path_text:
            raise ConfigError(f"AUTOFUNNEL_SMTP_URL: {url!r} names no folder")
        if path_text.startswith("localhost/"):
            path_text = path_text[len("localhost") :]
        path = Path(path_text)
        return FileTransport(path if path.is_absolute() else Path(project_dir) / path)
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"AUTOFUNNEL_SMTP_URL: unknown scheme {scheme!r}; expected smtp, smtp+starttls, smtps or file")
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ConfigError(f"AUTOFUNNEL_SMTP_URL: {_hide_password(url)!r} names no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"AUTOFUNNEL_SMTP_URL: bad port in {_hide_password(url)!r}") from None
    query = parse_qs(parts.query)
    if timeout is None:
        try:
            timeout = float(query.get("timeout", [DEFAULT_TIMEOUT])[0])
        except ValueError:
            raise ConfigError("AUTOFUNNEL_SMTP_URL: timeout must be a number of seconds") from None
    if timeout <= 0:
        raise ConfigError("AUTOFUNNEL_SMTP_URL: timeout must be greater than 0")
    security = {"smtp": "plain", "smtp+starttls": "starttls", "smtps": "tls"}[scheme]
    return SmtpTransport(
        host=host,
        port=port,
        security=security,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        timeout=timeout,
        helo=query.get("helo", [None])[0],
        ssl_context=ssl_context,
    )


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
