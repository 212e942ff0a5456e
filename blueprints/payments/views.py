"""HTTP for payments, refunds and the gateway's webhooks (API.md "payments")."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import request

from blueprints.common.auth import me
from blueprints.common.idempotency import HEADER as IDEMPOTENCY_HEADER
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import operation_doc
from blueprints.common.ratelimits import limiter
from blueprints.common.request_hooks import accepts_any_content
from blueprints.common.teams import team_permission
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from blueprints.payments.schemas import (
    PaymentAccepted,
    PaymentDetail,
    PaymentEnvelope,
    PaymentIn,
    PaymentListQuery,
    PaymentOut,
    PaymentPage,
    RefundAccepted,
    RefundIn,
    RefundOut,
    WebhookReceived,
)
from integrations.payments import InvalidWebhook
from integrations.stripe_gateway import get_gateway
from models import Payment, Refund
from services.billing import payments, refunds, webhooks
from services.core.errors import ServiceError

bp = APIBlueprint("payments", __name__, url_prefix="/api/v1/teams", tag="payments")
webhooks_bp = APIBlueprint("webhooks", __name__, url_prefix="/api/v1/webhooks", tag="payments")


def payment_out(payment: Payment) -> PaymentOut:
    return PaymentOut.model_validate(payment, from_attributes=True)


def refund_out(refund: Refund) -> RefundOut:
    return RefundOut.model_validate(refund, from_attributes=True)


@bp.get("/<uuid:team_id>/payments")
@team_permission("payments.read")
@bp.input(PaymentListQuery, location="query", arg_name="query")
@bp.output(PaymentPage)
def list_payments(team_id: uuid.UUID, query: PaymentListQuery) -> PaymentPage:
    """The team's payments, newest first (filters: status, from, to)."""
    page = payments.list_payments(
        team_id, status=query.status, created_from=query.from_, created_to=query.to,
        limit=query.limit, cursor=query.cursor,
    )  # fmt: skip
    return PaymentPage(items=[payment_out(p) for p in page.items], next_cursor=page.next_cursor)


@bp.post("/<uuid:team_id>/payments")
@team_permission("payments.create")
@bp.input(PaymentIn, location="json", arg_name="body")
@idempotent(required=True)
@bp.output(PaymentAccepted, status_code=202)
@bp.doc(responses={
    403: "The role is too weak, or the caller's email address is not verified",
    429: "Rate limited, or too many of the team's payments failed lately (see Retry-After)",
})  # fmt: skip
def create_payment(team_id: uuid.UUID, body: PaymentIn) -> Any:
    """Take a payment: answered at once (pending); the charge runs in the background.
    Needs a verified email address; paused while the team's payments keep failing."""
    payment, job = payments.create_payment(
        me(), team_id, amount=body.amount, currency=body.currency, description=body.description,
        payment_method=body.payment_method, idempotency_key=request.headers[IDEMPOTENCY_HEADER],
    )  # fmt: skip
    return accepted(PaymentAccepted(job=job_out(job), payment=payment_out(payment)), job.id)


@bp.get("/<uuid:team_id>/payments/<uuid:payment_id>")
@team_permission("payments.read")
@bp.output(PaymentEnvelope)
def get_payment(team_id: uuid.UUID, payment_id: uuid.UUID) -> PaymentEnvelope:
    """One payment with its refunds."""
    payment = payments.get_payment(team_id, payment_id)
    found = [refund_out(r) for r in refunds.list_refunds(payment)]
    return PaymentEnvelope(
        payment=PaymentDetail(**payment_out(payment).model_dump(), refunds=found)
    )


@bp.post("/<uuid:team_id>/payments/<uuid:payment_id>/refunds")
@team_permission("payments.refund")
@bp.input(RefundIn, location="json", arg_name="body")
@idempotent(required=True)
@bp.output(RefundAccepted, status_code=202)
@bp.doc(responses={409: "Only a succeeded payment can be refunded"})
def create_refund(team_id: uuid.UUID, payment_id: uuid.UUID, body: RefundIn) -> Any:
    """Refund all or part of a payment (never more than what was captured)."""
    refund, job = refunds.create_refund(
        me(), team_id, payment_id, amount=body.amount, reason=body.reason,
        idempotency_key=request.headers[IDEMPOTENCY_HEADER],
    )  # fmt: skip
    return accepted(RefundAccepted(job=job_out(job), refund=refund_out(refund)), job.id)


class InvalidSignature(ServiceError):
    status, title, type_slug = 400, "Bad Request", "invalid-webhook-signature"


@webhooks_bp.post("/stripe")
@operation_doc(operation_id="receive_stripe_event")
@limiter.exempt  # the gateway retries from many addresses; the signature is the guard
@accepts_any_content
@webhooks_bp.output(WebhookReceived)
@webhooks_bp.doc(responses={400: "The signature or timestamp does not verify"})
def stripe_webhook() -> WebhookReceived:
    """Receive a Stripe event: verified, stored once, processed by a job."""
    try:
        event = get_gateway().parse_webhook(
            request.get_data(), request.headers.get("Stripe-Signature", "")
        )
    except InvalidWebhook as exc:
        raise InvalidSignature(str(exc) or "The webhook signature does not verify.") from None
    return WebhookReceived(duplicate=not webhooks.record_event(event))
