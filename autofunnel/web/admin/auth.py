"""Who is logged in: Flask-Login's user object over the credentials service's record."""

from __future__ import annotations

from flask_login import UserMixin

from autofunnel.services.credentials import UserInfo


class AdminUser(UserMixin):  # type: ignore[misc]
    def __init__(self, info: UserInfo) -> None:
        self.info = info

    def get_id(self) -> str:
        return str(self.info.id)

    @property
    def email(self) -> str:
        return self.info.email
