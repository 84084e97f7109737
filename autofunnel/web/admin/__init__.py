"""The seller's admin at `/admin`: server-rendered pages, each a thin view over one service.

The figures come from the same services as the JSON API (a funnel page is
`funnel_report`, a lead page is `lead_view`), so a page and the API cannot
disagree. Charts are SVG shapes computed in `charts.py`; the pages need no
JavaScript and load nothing from outside the app.
"""

from __future__ import annotations

from flask import Flask

from autofunnel.services.runtime import Runtime
from autofunnel.web.admin.security import install_security
from autofunnel.web.admin.views import admin, root


def install_admin(app: Flask, rt: Runtime) -> None:
    """Register the admin's pages, its static files and its security on `app` (after the other blueprints)."""
    app.register_blueprint(admin)
    app.register_blueprint(root)
    install_security(app, rt)
