"""`autofunnel run` on nothing but the package: SQLite, the folder broker, real processes.

Whatever backend this suite runs on, `run` is proved with nothing configured but
where mail goes (the SMTP sink): that is the one-machine promise.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from services_at_hand import Part, clean_environment, free_port, http_status, wait_until
from smtp_sink import SmtpSink

from autofunnel.services.starter import starter_files


def _post(url: str, key: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _any_hour_no_holdout(project: Path) -> None:
    """The starter funnel sends only 09:00–21:00 and never on Sundays, and holds out a random
    10 %: a test that must see the welcome email at any hour, every time, switches those off."""
    yoga = project / "funnels" / "yoga.yml"
    kept = [line for line in yoga.read_text().splitlines() if not line.startswith(("send_window:", "quiet_days:", "holdout:"))]
    yoga.write_text("\n".join(kept) + "\n")


def test_run_with_nothing_configured_sends_the_welcome_email(project_dir: Path, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    _any_hour_no_holdout(project_dir)
    port = free_port()
    env = clean_environment(smtp_url=smtp_sink.url())
    run = Part(["run", "--port", str(port)], env=env, cwd=project_dir, log=tmp_path / "run.log").start()
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=60, what=f"/healthz\n{run.output()}")
        created = subprocess.run([sys.executable, "-m", "autofunnel", "apikey", "create"], env=env, cwd=project_dir, capture_output=True, text=True, check=True)
        key = created.stdout.strip().splitlines()[-1]
        base = f"http://127.0.0.1:{port}/api/v1"
        assert _post(f"{base}/subscribe", key, {"email": "new@reader.example", "funnel": "yoga", "first_name": "Ida"})["status"] == "pending"

        try:
            wait_until(lambda: smtp_sink.messages, timeout=60, what="the confirmation email")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{run.output()}") from None
        confirmation = smtp_sink.messages[0]
        assert confirmation.message["Subject"] == "Please confirm your subscription to Yoga for beginners"
        link = re.search(rf'href="http://localhost:{port}(/confirm/[^"]+)"', confirmation.message.get_body(("html",)).get_content())
        assert link is not None, "the confirmation link follows --port when no base URL is set"
        local = f"http://127.0.0.1:{port}{link.group(1)}"
        with urllib.request.urlopen(urllib.request.Request(local, data=b"", method="POST"), timeout=10) as answer:
            assert answer.status == 200

        try:
            wait_until(lambda: len(smtp_sink.messages) >= 2, timeout=60, what="the welcome email")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{run.output()}") from None
        received = smtp_sink.messages[1]
        assert received.recipients == ("new@reader.example",)
        assert received.message["Subject"] == "Ida, your yoga guide is inside"
        assert f"http://localhost:{port}/t/c/".encode() in received.raw  # links follow --port when no base URL is set
        assert (project_dir / ".autofunnel-broker").is_dir() and (project_dir / "autofunnel.db").exists()

        assert run.process is not None
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=30) == 0, run.output()
        assert len(smtp_sink.messages) == 2
        subprocess.run(["git", "init", "-q"], cwd=project_dir, check=True)
        untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project_dir, capture_output=True, text=True, check=True)
        made = sorted(line[3:] for line in untracked.stdout.splitlines())
        assert made == sorted(starter_files()), made  # init's .gitignore covers everything run made
        assert run.output().count("warning: base_url is http://localhost:") == 1, run.output()  # once, not once per part
    finally:
        run.stop()
