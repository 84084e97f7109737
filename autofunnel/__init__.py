"""autofunnel: declarative email sales funnels with honest reports."""

__version__ = "0.1.0"
