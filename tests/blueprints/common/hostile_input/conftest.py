"""Fixtures of the hostile-input tests."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient

from extensions import db
from models import Payment
from services.inventory import items as inventory
from tests.blueprints.common.hostile_input.hostile import World
from tests.factories import auth_headers, give_plan, make_team, make_user


@pytest.fixture
def world(client: FlaskClient) -> World:
    owner = make_user()
    team_id = make_team(owner)
    give_plan(team_id)
    item = inventory.create_item(
        owner, team_id, sku="SKU-1", name="Widget", description=None, quantity=10,
        unit_price=500, currency="USD", low_stock_threshold=5,
    )  # fmt: skip
    payment = Payment(
        id=uuid.uuid4(), team_id=team_id, created_by_id=owner.id, amount=1000, currency="USD",
        status="succeeded", payment_method="pm_card_visa", idempotency_key="seed",
    )  # fmt: skip
    db.session.add(payment)
    db.session.commit()
    return World(owner, team_id, item.id, payment.id, auth_headers(owner))
