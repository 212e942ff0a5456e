"""Sign-up and sign-in as a frontend sees them, and `flask users create` for operators."""

from __future__ import annotations

from apiflask import APIFlask
from click.testing import Result
from flask.testing import FlaskClient
from flask_jwt_extended import decode_token
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from extensions import db
from models import Team, TeamMember, User, UserSession
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import bearer, problem_body

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def users_with_email(email: str) -> int:
    return (
        db.session.scalar(
            select(func.count()).select_from(User).where(func.lower(User.email) == email.lower())
        )
        or 0
    )


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> TestResponse:
    return client.post(LOGIN, json={"email": email, "password": password})


# register -------------------------------------------------------------------------------


def test_register_creates_user_and_personal_team(client: FlaskClient) -> None:
    response = client.post(
        REGISTER, json={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    # Nothing about the account: the same answer as for an address that has one.
    assert response.get_json() == {
        "status": "accepted", "detail": "Check the inbox of this address to continue."
    }  # fmt: skip
    user = db.session.scalar(select(User).where(User.email == "ann@example.com"))
    assert user is not None and user.name == "Ann"
    assert user.email_verified_at is None and not user.is_admin

    teams = db.session.scalars(select(Team).where(Team.created_by_id == user.id)).all()
    assert len(teams) == 1 and teams[0].is_personal
    members = db.session.scalars(select(TeamMember).where(TeamMember.team_id == teams[0].id)).all()
    assert [(m.user_id, m.role) for m in members] == [(user.id, "owner")]


def test_a_taken_address_differing_in_case_gets_the_same_answer_and_nothing(
    client: FlaskClient,
) -> None:
    first = client.post(
        REGISTER, json={"email": "Bob@Example.com", "password": PASSWORD, "name": "Bob"}
    )
    assert first.status_code == 202
    again = client.post(
        REGISTER, json={"email": "bob@example.com", "password": PASSWORD, "name": "Bobby"}
    )
    assert (again.status_code, again.get_json()) == (first.status_code, first.get_json())
    assert users_with_email("bob@example.com") == 1
    assert db.session.scalar(select(func.count()).select_from(Team)) == 1


def test_short_password_is_422_and_creates_nothing(client: FlaskClient) -> None:
    response = client.post(
        REGISTER, json={"email": "carl@example.com", "password": "short", "name": "Carl"}
    )
    body = problem_body(response, 422)
    assert list(body["errors"]) == ["password"]
    assert users_with_email("carl@example.com") == 0


def test_bad_email_is_422_and_creates_nothing(client: FlaskClient) -> None:
    response = client.post(
        REGISTER, json={"email": "carl.example.com", "password": PASSWORD, "name": "Carl"}
    )
    body = problem_body(response, 422)
    assert list(body["errors"]) == ["email"]
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


# login ----------------------------------------------------------------------------------


def test_login_returns_tokens_that_work(client: FlaskClient) -> None:
    user = make_user(email="dana@example.com")
    response = login(client, "dana@example.com")
    assert response.status_code == 200, response.get_data(as_text=True)
    tokens = response.get_json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["access_token"] and tokens["refresh_token"]
    assert tokens["access_token"] != tokens["refresh_token"]

    jobs = client.get("/api/v1/jobs", headers=bearer(tokens["access_token"]))
    assert jobs.status_code == 200
    assert jobs.get_json() == {"items": [], "next_cursor": None}

    # The email is matched case-insensitively.
    assert login(client, "DANA@example.com").status_code == 200
    assert decode_token(tokens["access_token"])["sub"] == str(user.id)


def test_login_opens_a_session(client: FlaskClient) -> None:
    user = make_user()
    tokens = login(client, user.email).get_json()
    sessions = db.session.scalars(select(UserSession).where(UserSession.user_id == user.id)).all()
    assert len(sessions) == 1
    session = sessions[0]
    assert session.revoked_at is None
    assert str(session.ip) == "127.0.0.1"
    # Both tokens belong to that session; the refresh token is the one it will accept.
    assert decode_token(tokens["access_token"])["sid"] == str(session.id)
    refresh = decode_token(tokens["refresh_token"])
    assert refresh["sid"] == str(session.id)
    assert session.current_refresh_jti == refresh["jti"]


def test_wrong_password_and_unknown_email_look_the_same(client: FlaskClient) -> None:
    make_user(email="erin@example.com")
    wrong = problem_body(login(client, "erin@example.com", "not the password"), 401)
    unknown = problem_body(login(client, "nobody@example.com", "not the password"), 401)
    assert wrong["detail"] == unknown["detail"] == "Email or password is incorrect."
    assert (wrong["type"], wrong["title"]) == (unknown["type"], unknown["title"])
    assert db.session.scalar(select(func.count()).select_from(UserSession)) == 0


def test_deactivated_user_is_locked_out_at_once(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(user)
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200

    user.is_active = False
    db.session.commit()
    db.session.expire_all()  # the next request must read the row from the database

    body = problem_body(client.get("/api/v1/jobs", headers=headers), 401)
    assert "not active" in body["detail"]
    problem_body(login(client, user.email), 401)


# CLI ------------------------------------------------------------------------------------


OPS_PASSWORD = "operator password 1"


def users_create(app: APIFlask, email: str, name: str, *flags: str) -> Result:
    options = ["--email", email, "--name", name, "--password", OPS_PASSWORD, *flags]
    return app.test_cli_runner().invoke(args=["users", "create", *options])


def test_cli_creates_an_admin_who_can_use_admin_routes(app: APIFlask, client: FlaskClient) -> None:
    result = users_create(app, "ops@example.com", "Ops", "--admin")
    assert result.exit_code == 0, result.output
    assert "created admin user" in result.output and "ops@example.com" in result.output

    tokens = login(client, "ops@example.com", OPS_PASSWORD).get_json()
    response = client.get("/api/v1/admin/jobs", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    # The only job so far: emailing the "new sign-in" security notice of that login.
    assert [j["type"] for j in response.get_json()["items"]] == ["notifications.send_emails"]


def test_cli_refuses_a_duplicate_email(app: APIFlask) -> None:
    make_user(email="taken@example.com")
    result = users_create(app, "TAKEN@example.com", "Again")
    assert result.exit_code != 0
    assert "An account with this email already exists." in result.output
    assert "Traceback" not in result.output
    assert users_with_email("taken@example.com") == 1
