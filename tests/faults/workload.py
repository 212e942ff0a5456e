"""A steady mixed workload over HTTP, and the record of what the server accepted.

Each client thread loops over payments, exports, uploads, analytics batches and stock alerts
(an item taken below its low-stock threshold, which notifies and mails the team's owner
through the fan-out job, the one job that claims in its work's transaction). Every POST carries
an Idempotency-Key (analytics batches: dedup ids) and is retried with the SAME key after a
503 or a broken connection, as a well-behaved frontend does, until it gets an answer or
gives up. What counts later: the requests answered 2xx (accepted), the keys given up on
(may or may not have had their effect), and every 5xx (only a 503 with Retry-After during
an outage is allowed).
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

GIVE_UP_SECONDS = 90.0  # a request that gets no answer for this long is abandoned
BATCH_EVENTS = 20


@dataclass
class Ledger:
    """What the clients saw, shared by their threads (counters under one lock)."""

    payments: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (key, amount)
    exports: dict[str, str] = field(default_factory=dict)  # export id -> job id
    events: set[str] = field(default_factory=set)  # dedup ids of accepted batches
    uploads: dict[str, str] = field(default_factory=dict)  # file id -> processing job id
    alerts: dict[str, tuple[str, str]] = field(default_factory=dict)  # adjustment -> item, sku
    abandoned: dict[str, int] = field(default_factory=dict)  # kind -> keys given up on
    bad_5xx: list[str] = field(default_factory=list)  # 5xx other than 503 + Retry-After
    outage_503: int = 0
    requests: int = 0  # every HTTP request sent, retries included
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def accepted(self) -> int:
        return (len(self.payments) + len(self.exports) + len(self.uploads) + len(self.alerts)
                + len(self.events) // BATCH_EVENTS)  # fmt: skip

    def count(self, counter: str) -> None:
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def abandon(self, kind: str) -> None:
        with self.lock:
            self.abandoned[kind] = self.abandoned.get(kind, 0) + 1


class Client(threading.Thread):
    def __init__(self, port: int, team_id: str, token: str, ledger: Ledger, index: int,
                 stop: threading.Event, amounts: itertools.count[int]) -> None:  # fmt: skip
        super().__init__(daemon=True, name=f"client-{index}")
        self.port, self.team_id, self.ledger, self.index = port, team_id, ledger, index
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.stop_event, self.amounts = stop, amounts

    def run(self) -> None:
        for n in itertools.count():
            if self.stop_event.is_set():
                return
            kind = ("payment", "analytics", "payment", "export", "analytics", "upload",
                    "stock_alert")[n % 7]  # fmt: skip
            getattr(self, kind)()

    # --- the operations ----------------------------------------------------------------

    def payment(self) -> None:
        amount = next(self.amounts)  # unique: the receipt's subject identifies the payment
        key = f"pay-{uuid.uuid4()}"
        body = {"amount": amount, "currency": "usd", "description": f"Order {amount}",
                "payment_method": "pm_card_visa"}  # fmt: skip
        answer = self._post(f"/api/v1/teams/{self.team_id}/payments", body, key, "payment")
        if answer is not None:
            self.ledger.payments[answer["payment"]["id"]] = (key, amount)

    def export(self) -> None:
        key = f"export-{uuid.uuid4()}"
        body = {"resource": "payments", "format": "csv"}
        answer = self._post(f"/api/v1/teams/{self.team_id}/exports", body, key, "export")
        if answer is not None:
            self.ledger.exports[answer["export"]["id"]] = answer["job"]["id"]

    def analytics(self) -> None:
        batch = uuid.uuid4().hex
        now = datetime.now(UTC).isoformat()
        ids = [f"{batch}-{i}" for i in range(BATCH_EVENTS)]
        events = [{"name": "page.view", "occurred_at": now, "dedup_id": d,
                   "properties": {"client": self.index}} for d in ids]  # fmt: skip
        path = f"/api/v1/teams/{self.team_id}/analytics/events"
        if self._post(path, {"events": events}, None, "analytics") is not None:
            self.ledger.events.update(ids)

    def upload(self) -> None:
        """Presign, send the file to the form's URL (the app's local storage), complete."""
        data = f"notes {uuid.uuid4()}\n".encode()
        body = {"filename": "notes.txt", "content_type": "text/plain", "size": len(data)}
        uploads = f"/api/v1/teams/{self.team_id}/uploads"
        created = self._post(uploads, body, f"upload-{uuid.uuid4()}", "upload")
        if created is None:
            return
        form, file_id = created["upload"], created["file"]["id"]
        if self._post(urlsplit(form["url"]).path, None, None, "upload",
                      form=_multipart(form["fields"], data)) is None:  # fmt: skip
            return
        done = self._post(f"{uploads}/{file_id}/complete", None, f"complete-{file_id}", "upload")
        if done is not None:
            self.ledger.uploads[file_id] = done["job"]["id"]

    def stock_alert(self) -> None:
        """A new item (10 in stock, threshold 5) taken down by 6: one low-stock crossing."""
        sku = f"SKU-{uuid.uuid4().hex[:12]}"  # unique: the alert email's subject names it
        items = f"/api/v1/teams/{self.team_id}/inventory"
        body = {"sku": sku, "name": "Widget", "quantity": 10, "low_stock_threshold": 5}
        created = self._post(items, body, f"item-{sku}", "stock_alert")
        if created is None:
            return
        item_id = created["item"]["id"]
        path = f"{items}/{item_id}/adjustments"
        done = self._post(path, {"delta": -6}, f"adjust-{sku}", "stock_alert")
        if done is not None:
            self.ledger.alerts[done["adjustment"]["id"]] = (item_id, sku)

    # --- one request, retried until answered ------------------------------------------

    def _post(
        self, path: str, body: Any, key: str | None, kind: str,
        *, form: tuple[bytes, str] | None = None,
    ) -> dict[str, Any] | None:  # fmt: skip
        """The answer to a JSON POST (or, with `form`, a (body, content type) as a browser
        posts it), retried with the same key; None if it was never answered."""
        headers = {**self.headers, **({"Idempotency-Key": key} if key else {})}
        payload = json.dumps(body).encode() if body is not None else None
        if form is not None:
            payload, headers["Content-Type"] = form
            headers.pop("Authorization")  # the form's token is the credential
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            try:
                status, retry_after, answer = self._send(path, payload, headers)
            except (OSError, http.client.HTTPException):
                time.sleep(0.5)  # the server went away mid-request: ask again, same key
                continue
            if 200 <= status < 300:
                return answer
            if status == 503 and retry_after:
                self.ledger.count("outage_503")
                time.sleep(min(float(retry_after), 1.0))
                continue
            if status >= 500:
                with self.ledger.lock:
                    self.ledger.bad_5xx.append(f"{status} POST {path}: {str(answer)[:300]}")
                time.sleep(0.5)
                continue
            if status == 409:  # the first request with this key is still running
                time.sleep(0.2)
                continue
            raise AssertionError(f"POST {path} answered {status}: {answer}")
        self.ledger.abandon(kind)
        return None

    def _send(
        self, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str | None, dict[str, Any]]:
        self.ledger.count("requests")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            content = response.read()
            return response.status, response.getheader("Retry-After"), json.loads(content or b"{}")
        finally:
            conn.close()


def _multipart(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    """A presigned upload form with its file, as (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]  # fmt: skip
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="notes.txt"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                 + data + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
