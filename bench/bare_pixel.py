"""The ceiling for bench_public: a WSGI app that answers every request with the 43-byte GIF
and does nothing else, run under the same gunicorn settings and client, so an open's figure
can be read against what gunicorn and the machine allow at that moment."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
       b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))), ("Cache-Control", "no-store")])
    return [GIF]
