"""Nothing lost, nothing duplicated: a mixed workload while processes and servers fail.

`make test-faults` (FAULTS_PROFILE=full: at least 2,000 accepted requests) and CI (ci: a
shorter run with the same faults), on each broker topology (`TOPOLOGY=redis|rabbitmq|
sentinel`, tests/faults/stack.py). While client threads drive payments, exports, uploads,
analytics batches and stock alerts over HTTP (tests/faults/workload.py), the harness
SIGKILLs a worker, SIGTERMs a worker, takes the broker away (Redis restarted empty; on
RabbitMQ the node restarted, SIGKILLed, then wiped; on Sentinel the master SIGKILLed and
the replica promoted, twice), restarts PostgreSQL, takes the payment gateway and the SMTP
server away for a while, and runs two beats all along. Then, once every job has settled,
the ledger: every accepted payment charged exactly once at the gateway with exactly one
receipt email, every accepted export exactly one file, every accepted event stored and
counted in the rollups once, every accepted stock alert one notification and one email, no
job left unfinished, and no 5xx but 503 with Retry-After.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app import create_app
from extensions import db
from integrations.stripe_gateway import get_gateway
from models import Export, Job, Notification, TeamMember
from models.file import UserFile
from services.insights import aggregation
from services.messaging.mail import format_money
from tests.factories import auth_headers, make_user
from tests.faults.stack import TOPOLOGIES, NodeLoss, Stack, profile, topology
from tests.faults.workload import Client, Ledger
from tests.support import wait_for

PROFILES = {
    # clients, seconds of load before the first fault, seconds between faults, outage s
    "ci": {"clients": 4, "warmup": 4.0, "gap": 4.0, "outage": 4.0, "min_accepted": 300},
    "full": {"clients": 6, "warmup": 10.0, "gap": 14.0, "outage": 8.0, "min_accepted": 2000},
}
SETTLE_SECONDS = 240  # for every job to finish after the load stops
FINAL = ("succeeded", "failed", "dead", "cancelled")


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[], None]


@pytest.fixture
def stack() -> Iterator[Stack]:
    # Not pytest's tmp_path: every pytest run started meanwhile on this machine resets
    # /tmp/pytest-of-<user> to 0700, and PostgreSQL runs as another user (as root) and
    # would lose its data directory mid-run.
    work = Path(tempfile.mkdtemp(prefix="maycole-faults-"))
    stack = Stack(work, topology())
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_every_accepted_request_has_its_effect_exactly_once(stack: Stack) -> None:
    plan = PROFILES[profile()]
    app = create_app(stack.settings)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per command
    with app.app_context():
        owner = make_user()
        team_id = str(db.session.scalar(
            select(TeamMember.team_id).where(TeamMember.user_id == owner.id)
        ))  # fmt: skip
        token = auth_headers(owner)["Authorization"].removeprefix("Bearer ")
        owner_email = owner.email
        db.session.remove()

    ledger, stop = Ledger(), threading.Event()
    amounts = itertools.count(1001)
    clients = [Client(stack.web.port, team_id, token, ledger, i, stop, amounts)
               for i in range(int(plan["clients"]))]  # fmt: skip
    outage = float(plan["outage"])

    def gateway_outage() -> None:
        stack.stripe_switch.down()
        time.sleep(outage)
        stack.stripe_switch.up()

    def smtp_outage() -> None:
        stack.mail_switch.down()
        time.sleep(outage)
        stack.mail_switch.up()

    def fail_over() -> None:
        promoted = stack.fail_over_redis(outage / 2)
        injected[-1] += f" in {promoted:.1f} s"

    def rabbitmq(how: NodeLoss) -> Callable[[], None]:
        return lambda: stack.restart_rabbitmq(outage / 2, how)

    redis_restart = partial(stack.restart_redis, outage / 2)
    # The broker's faults: early (between the workers' faults and PostgreSQL's) and late.
    broker_faults, late_broker_faults = {
        "redis": ([Fault("Redis restarted (broker emptied)", redis_restart)], []),
        "rabbitmq": (
            [
                Fault("RabbitMQ node restarted", rabbitmq("stop")),
                Fault("Redis restarted (cache emptied)", redis_restart),
                Fault("RabbitMQ node SIGKILLed", rabbitmq("kill")),
            ],
            [Fault("RabbitMQ node SIGKILLed and wiped (queues, messages lost)", rabbitmq("wipe"))],
        ),
        "sentinel": (
            [Fault("Redis master SIGKILLed, replica promoted", fail_over)],
            [Fault("Redis master SIGKILLed again, old master promoted back", fail_over)],
        ),
    }[stack.topology]
    faults = [
        Fault("SIGKILL worker 0 (and its pool)", lambda: stack.kill_worker(0)),
        Fault("payment gateway unreachable", gateway_outage),
        Fault("SIGTERM worker 1 (warm shutdown)", lambda: stack.terminate_worker(1)),
        *broker_faults,
        Fault("SMTP server unreachable", smtp_outage),
        Fault("PostgreSQL restarted", lambda: stack.restart_postgres(outage / 2)),
        *late_broker_faults,
        Fault("SIGKILL worker 1 (and its pool)", lambda: stack.kill_worker(1)),
    ]
    injected: list[str] = ["two beat processes at once (whole run)"]
    for client in clients:
        client.start()
    try:
        time.sleep(float(plan["warmup"]))
        for fault in faults:
            injected.append(fault.name)
            fault.inject()
            time.sleep(float(plan["gap"]))
        # Keep going until the profile's volume is reached (bounded: at most 10 minutes).
        deadline = time.monotonic() + 600
        while ledger.accepted < int(plan["min_accepted"]) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stop.set()
        for client in clients:
            client.join(120)

    with app.app_context():
        _wait_until_settled(stack)
        report = _verify(ledger, owner_email, stack)
    _print_table(stack.topology, injected, ledger, report)
    assert ledger.accepted >= int(plan["min_accepted"]), "the run accepted too little work"
    assert report["lost"] == 0 and report["duplicated"] == 0, report["problems"]
    assert not report["problems"], report["problems"]
    assert not ledger.bad_5xx, ledger.bad_5xx[:10]


def _wait_until_settled(stack: Stack) -> None:
    def settled() -> bool:
        db.session.rollback()
        waiting = db.session.scalar(
            select(func.count()).select_from(Job).where(Job.status.not_in(FINAL))
        )
        return waiting == 0

    def describe() -> str:
        rows = db.session.execute(
            select(Job.type, Job.status, func.count()).where(Job.status.not_in(FINAL))
            .group_by(Job.type, Job.status)
        ).all()  # fmt: skip
        return f"jobs not finished: {rows}\n{stack.workers[0].describe()}"

    wait_for(settled, SETTLE_SECONDS, describe)


def _verify(ledger: Ledger, owner_email: str, stack: Stack) -> dict[str, object]:
    problems: list[str] = []
    lost = duplicated = verified = 0

    def exactly_once(effect: str, seen: int, duplicates: Callable[[], str] = str) -> None:
        """Tally one effect that must have happened exactly once (`seen` times)."""
        nonlocal lost, duplicated, verified
        if seen == 1:
            verified += 1
        elif seen == 0:
            lost += 1
            problems.append(f"{effect}: none")
        else:
            duplicated += seen - 1
            problems.append(f"{effect}: {seen} times {duplicates()}".rstrip())

    # Payments: one succeeded charge at the gateway and one receipt each.
    charges = Counter(
        p.metadata.get("payment_id") for p in get_gateway().list_payments(created_since=0)
        if p.status == "succeeded"
    )  # fmt: skip
    receipt_mail = [m for m in stack.mailbox.to(owner_email)
                    if "receipt" in str(m["Subject"]).lower()]  # fmt: skip
    # One email is one Message-ID: a worker SIGKILLed between handing a message to SMTP
    # and recording that (services.jobs.runner.record_external_effect) resends the SAME message,
    # which mail clients show once. Those resends are counted, and shown, apart.
    distinct = {(str(m["Subject"]), str(m["Message-ID"])) for m in receipt_mail}
    report_resent = len(receipt_mail) - len(distinct)
    receipts = Counter(subject.rsplit(": ", 1)[-1] for subject, _ in distinct)

    def receipt_ids(money: str) -> str:
        """The Message-IDs of the receipts for `money`: what a duplicate report shows."""
        return str([str(m["Message-ID"]) for m in receipt_mail
                    if str(m["Subject"]).endswith(money)])  # fmt: skip

    for payment_id, (_key, amount) in ledger.payments.items():
        money = format_money(amount, "USD")
        exactly_once(f"payment {payment_id} ({amount}) charge", charges[payment_id])
        exactly_once(
            f"payment {payment_id} ({amount}) receipt", receipts[money], partial(receipt_ids, money)
        )
    abandoned_payments = ledger.abandoned.get("payment", 0)
    extra_charges = sum(charges.values()) - len(ledger.payments) - abandoned_payments
    if extra_charges > 0:
        duplicated += extra_charges
        problems.append(f"{extra_charges} charges belong to no request")

    # Exports: the job succeeded and exactly one stored file.
    storage = Path(stack.settings.storage_local_dir)
    for export_id, job_id in ledger.exports.items():
        export = db.session.get(Export, uuid.UUID(export_id))
        job = db.session.get(Job, uuid.UUID(job_id))
        # The object itself (local storage keeps a `.meta.json` beside each one).
        files = list(storage.rglob(f"{export_id}.csv")) if storage.exists() else []
        if job is None or job.status != "succeeded" or export is None or len(files) != 1:
            lost += not files
            duplicated += max(0, len(files) - 1)
            problems.append(f"export {export_id}: job {job and job.status}, files {len(files)}")
        else:
            verified += 1
    extra_exports = int(db.session.scalar(select(func.count()).select_from(Export)) or 0) - (
        len(ledger.exports) + ledger.abandoned.get("export", 0)
    )
    if extra_exports > 0:
        duplicated += extra_exports
        problems.append(f"{extra_exports} exports belong to no request")

    # Uploads: processed (its job succeeded, the file ready) and stored once.
    for file_id, job_id in ledger.uploads.items():
        row = db.session.get(UserFile, uuid.UUID(file_id))
        job = db.session.get(Job, uuid.UUID(job_id))
        stored_file = storage / "objects" / row.storage_key if row is not None else None
        if row is None or row.state != "ready" or job is None or job.status != "succeeded":
            lost += 1
            problems.append(f"upload {file_id}: {row and row.state}, job {job and job.status}")
        elif stored_file is None or not stored_file.is_file():
            lost += 1
            problems.append(f"upload {file_id}: no stored object")
        else:
            verified += 1

    # Stock alerts: the owner notified once (the fan-out job, which claims in its work's
    # transaction) and mailed once (one Message-ID; a resend of the same one is counted
    # apart, as for receipts).
    alert_mail = [m for m in stack.mailbox.to(owner_email)
                  if str(m["Subject"]).endswith(" is running low")]  # fmt: skip
    distinct_alerts = {(str(m["Subject"]), str(m["Message-ID"])) for m in alert_mail}
    alert_ids = Counter(subject for subject, _ in distinct_alerts)
    for adjustment_id, (item_id, sku) in ledger.alerts.items():
        rows = db.session.scalar(select(func.count()).select_from(Notification).where(
            Notification.event_key == f"low_stock:{item_id}:{adjustment_id}"
        ))  # fmt: skip
        exactly_once(f"stock alert {sku} notification", rows or 0)
        exactly_once(f"stock alert {sku} email", alert_ids[f"{sku} is running low"])
    report_resent += len(alert_mail) - sum(alert_ids.values())

    # Analytics: every accepted event stored once and counted once by the aggregation.
    stored = set(db.session.scalars(text("SELECT dedup_id FROM analytics_events")))
    missing = ledger.events - stored
    lost += len(missing)
    verified += len(ledger.events) - len(missing)
    if missing:
        problems.append(f"{len(missing)} accepted events were not stored")
    aggregation.run()
    db.session.commit()
    counted = db.session.scalar(text(
        "SELECT coalesce(sum(value), 0) FROM analytics_rollups"
        " WHERE name = 'page.view' AND interval = 'hour'"
    ))  # fmt: skip
    if counted != len(stored):
        problems.append(f"rollups count {counted} page views, {len(stored)} are stored")
        duplicated += max(0, int(counted or 0) - len(stored))

    # Jobs: nothing left running, and every dead job says why.
    dead = db.session.execute(select(Job.type, Job.error).where(Job.status == "dead")).all()
    problems += [f"dead {t} job without a reason" for t, error in dead if not error]
    return {"lost": lost, "duplicated": duplicated, "verified": verified,
            "dead": len(dead), "problems": problems, "resent": report_resent}  # fmt: skip


def _print_table(
    topology_name: str, injected: list[str], ledger: Ledger, report: dict[str, object]
) -> None:
    lines = [
        "",
        f"| fault-injection run: {topology_name} | |",
        "|---|---|",
        f"| topology | {TOPOLOGIES[topology_name]} |",
        f"| faults injected | {len(injected)}: {'; '.join(injected)} |",
        f"| HTTP requests sent (retries included) | {ledger.requests} |",
        f"| requests accepted (2xx) | {ledger.accepted} (payments {len(ledger.payments)}, "
        f"exports {len(ledger.exports)}, uploads {len(ledger.uploads)}, "
        f"stock alerts {len(ledger.alerts)}, analytics batches {len(ledger.events) // 20}) |",
        f"| 503 + Retry-After during outages | {ledger.outage_503} |",
        f"| other 5xx | {len(ledger.bad_5xx)} |",
        f"| abandoned (never answered) | {dict(ledger.abandoned) or 0} |",
        f"| effects verified | {report['verified']} |",
        f"| lost | {report['lost']} |",
        f"| duplicated | {report['duplicated']} |",
        f"| emails resent with the same Message-ID (worker killed mid-send) | {report['resent']} |",
        f"| dead jobs (with a reason) | {report['dead']} |",
    ]
    print("\n".join(lines), flush=True)
