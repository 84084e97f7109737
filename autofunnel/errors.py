"""The exceptions autofunnel raises on purpose, all under `AutofunnelError`, all here.

Each class's docstring is its default message, so a shell (CLI, web, worker)
can print any of them as one honest line without knowing which it caught. A
delivery error says whether it is `permanent` (the mail server refused for
good) or transient (try again later). The modules that raise them import them
from here.
"""

from __future__ import annotations

from typing import Final


class AutofunnelError(Exception):
    """Something went wrong in autofunnel."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(AutofunnelError):
    """The configuration has a bad value."""


class ProjectError(AutofunnelError):
    """The funnel files or templates have errors; run `autofunnel validate`."""


class NotMigratedError(AutofunnelError):
    """database is not migrated; run `autofunnel db upgrade`"""


class UnknownRevisionError(AutofunnelError):
    """the database was migrated by a newer autofunnel; install that version or newer"""


class DatabaseUnavailableError(AutofunnelError):
    """cannot connect to the database; check AUTOFUNNEL_DATABASE_URL"""


class DuplicateError(AutofunnelError):
    """that already exists"""


class InvalidInputError(AutofunnelError):
    """the input is not valid"""

    code = "invalid"

    def __init__(self, message: str | None = None, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        if code is not None:
            self.code = code


class NotFoundError(InvalidInputError):
    """no such thing"""

    code = "not_found"


class ProjectExistsError(AutofunnelError):
    """The folder already holds project files; nothing was written."""


class FrontMatterError(AutofunnelError, ValueError):
    """The `---` front matter of an email template is not valid; `line` says where."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class YamlSyntaxError(AutofunnelError, ValueError):
    """A funnel file is not valid YAML; `line` says where."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class DurationError(AutofunnelError, ValueError):
    """A duration is not written as a number followed by s, m, h, d or w."""


class TemplateRenderError(AutofunnelError):
    """an email template could not be rendered"""

    def __init__(self, message: str | None = None, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class AddressError(AutofunnelError):
    """the email address cannot be written in an email header"""


HARD_BOUNCE_CODES: Final = frozenset({550, 551, 553})
"""Answers to RCPT that mean the address does not exist or is refused for good."""


class DeliveryError(AutofunnelError):
    """the email could not be handed to the mail server"""

    permanent: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        code: int | None = None,
        text: str | None = None,
        stage: str | None = None,
        recipient: str | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        """The SMTP reply code, when the server answered (550, 451 …)."""
        self.text = text
        """The server's reply text, as it said it."""
        self.stage = stage
        """Where it failed: connect, tls, auth, mail, rcpt, data, write."""
        self.recipient = recipient
        self.maybe_sent = maybe_sent
        """True when the failure came after DATA was sent: the server may have taken the message."""

    @property
    def hard_bounce(self) -> bool:
        """The server refused this recipient for good (550/551/553 at RCPT): suppress the lead."""
        return self.permanent and self.stage == "rcpt" and self.code in HARD_BOUNCE_CODES


class PermanentDeliveryError(DeliveryError):
    """the mail server refused the email for good"""

    permanent = True


class TransientDeliveryError(DeliveryError):
    """the mail server could not take the email now; it may later"""

    permanent = False


class BadToken(AutofunnelError):
    """the link is not valid: it was changed, cut short, or made for something else"""


class HookRejected(InvalidInputError):
    """the webhook's signature does not match; nothing was recorded"""

    code = "bad_signature"


class HookNotConfigured(AutofunnelError):
    """this webhook has no secret configured"""

    def __init__(self, setting: str) -> None:
        super().__init__(f"this webhook is not set up: set AUTOFUNNEL_{setting.upper()} to the secret the provider shows")
        self.setting = setting


class HookUnavailable(AutofunnelError):
    """something the check needs cannot be had now (a relay's signing certificate); the relay should retry"""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class UnknownHook(AutofunnelError):
    """no webhook of that name"""


class IllegalStatusMove(AutofunnelError, ValueError):
    """a delivery's status cannot move that way (domain/statuses.py's DELIVERY_MOVES)"""
