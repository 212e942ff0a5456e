"""The development SMTP sink that `devservices run` starts when SMTP_URL is unset."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_policy
from pathlib import Path

from scripts import devservices as ds
from tests.support import Mailbox, refused

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "devservices.py"

# The command devservices runs: send one mail to wherever SMTP_URL points.
SEND = """
import os, smtplib
from email.message import EmailMessage
from urllib.parse import urlsplit
url = urlsplit(os.environ["SMTP_URL"])
print("SMTP_URL=" + os.environ["SMTP_URL"])
msg = EmailMessage()
msg["From"], msg["To"], msg["Subject"] = "app@maycole.local", "dev@example.com", "Sink check"
msg.set_content("Read me under var/mail.")
with smtplib.SMTP(url.hostname, url.port, timeout=5) as smtp:
    smtp.send_message(msg)
"""


def run_cli(tmp_path: Path, smtp_port: int) -> subprocess.CompletedProcess[str]:
    """`devservices run` with the test run's DATABASE_URL/REDIS_URL but no SMTP_URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("SMTP_URL", "SMTP_PORT")}
    env["SMTP_PORT"] = str(smtp_port)
    var = str(tmp_path / "var")
    cmd = [sys.executable, str(SCRIPT), "run", "--var", var, "--", sys.executable, "-c", SEND]
    return subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60
    )


def test_run_starts_a_sink_that_saves_mail_as_eml_files_and_stops_it(tmp_path: Path) -> None:
    port = ds.free_port()
    result = run_cli(tmp_path, port)

    assert result.returncode == 0, result.stderr
    assert f"SMTP_URL=smtp://127.0.0.1:{port}" in result.stdout
    assert f"mail: started SMTP sink at 127.0.0.1:{port}" in result.stderr
    saved = list((tmp_path / "var" / "mail").glob("*.eml"))
    assert len(saved) == 1, result.stderr
    mail = message_from_bytes(saved[0].read_bytes(), policy=email_policy)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == "Sink check" and mail["X-Envelope-To"] == "dev@example.com"
    assert "Read me under var/mail." in Mailbox.text_of(mail)
    assert refused(port)  # stopped with the command


def test_run_reuses_an_smtp_server_already_listening(tmp_path: Path) -> None:
    found = Mailbox(ds.free_port())
    found.start()
    try:
        port = int(found.url.rsplit(":", 1)[1])
        result = run_cli(tmp_path, port)
        assert result.returncode == 0, result.stderr
        assert f"mail: found SMTP server at 127.0.0.1:{port}" in result.stderr
        assert found.wait_for("dev@example.com", "Sink check", timeout=5)
        assert not (tmp_path / "var" / "mail").exists()
        assert not refused(port)  # not ours to stop
    finally:
        found.stop()
