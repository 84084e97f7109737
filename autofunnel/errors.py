"""The exceptions autofunnel raises on purpose.

Each class's docstring is its default message, so a shell (CLI, web, worker)
can print any of them as one honest line without knowing which it caught.
"""

from __future__ import annotations


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
