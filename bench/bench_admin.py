"""Server time of every admin page over a filled database: milliseconds per page, median.

    python bench/gen_report_data.py --leads 1000000 --database-url sqlite:////tmp/af-report-1m.db
    python bench/bench_admin.py --database-url sqlite:////tmp/af-report-1m.db [--skip owner]

Pages are requested through the Flask app in this process (a logged-in test
client: routing, the service calls, templates and all), as of the generator's
last day, so "the last 30 days" hold its latest cohorts. Each page is fetched
once to warm the caches, then `--repeat` times; the median is printed. The
target is 300 ms a page at 1,000,000 leads.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from common import history_runtime
from sqlalchemy import func, select

from autofunnel.errors import DuplicateError
from autofunnel.services.credentials import create_user
from autofunnel.store.db import backend_name
from autofunnel.store.models import Lead
from autofunnel.web import create_app

USER, PASSWORD = "bench@shop.example", "bench password 0123"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip", action="append", default=[], metavar="TEXT",
                        help="leave out the pages whose name contains TEXT (e.g. --skip owner: counted from the facts, seconds at 1M leads)")
    args = parser.parse_args()
    rt = history_runtime(args.database_url, "af-admin-bench-")
    try:
        create_user(rt.db, rt.clock, USER, PASSWORD)
    except DuplicateError:
        pass
    with rt.db.read() as session:
        leads = session.scalar(select(func.count()).select_from(Lead)) or 0
        some = session.scalar(select(Lead.id).order_by(Lead.id.desc()).limit(1)) or 1
    app = create_app(runtime=rt)
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    assert client.post("/admin/login", data={"email": USER, "password": PASSWORD, "csrf_token": token.group(1)}).status_code == 302
    pages = (
        ("home", "/admin/"),
        ("funnel, last 30 days", "/admin/funnels/yoga"),
        ("funnel, last 90 days", "/admin/funnels/yoga?days=90"),
        ("funnel by=channel", "/admin/funnels/yoga?by=channel"),
        ("funnel interval=week", "/admin/funnels/yoga?interval=week&days=90"),
        ("funnel by=owner", "/admin/funnels/yoga?by=owner"),
        ("funnel by=product", "/admin/funnels/yoga?by=product"),
        ("funnel mode=calendar", "/admin/funnels/yoga?mode=calendar"),
        ("funnel attribution=linear", "/admin/funnels/yoga?attribution=linear"),
        ("flow map", "/admin/flows/yoga"),
        ("leads, first page", "/admin/leads"),
        ("leads, email prefix", "/admin/leads?q=lead12"),
        ("leads, status", "/admin/leads?status=unsubscribed"),
        ("leads, funnel + stage", "/admin/leads?funnel=yoga&stage=vip"),
        ("leads, waiting on a step", "/admin/leads?funnel=yoga&stage=lead&step=wait-after-welcome"),
        ("a lead", f"/admin/leads/{some}"),
        ("preview", f"/admin/preview?flow=yoga&template=tripwire-offer&lead={some}"),
        ("spend", "/admin/spend"),
        ("files", "/admin/files"),
    )
    print(f"backend: {backend_name(args.database_url)}; leads: {leads:,}; median of {args.repeat} after one warm-up, ms")
    for name, path in pages:
        if any(text in name for text in args.skip):
            continue
        status = client.get(path).status_code
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        print(f"{name:<28} {statistics.median(times):8.1f} ms   (HTTP {status}; runs {min(times):.0f}-{max(times):.0f})")
    rt.close()


if __name__ == "__main__":
    main()
