"""Every operation of /openapi.json, fuzzed one at a time as a signed-in team owner.

Each generated case is sent with the owner's credentials (a fresh bearer token, or their
API key, as Hypothesis chooses) and the team's id in `team_id`; responses must never be
500, must match the status codes, headers and schemas the document declares, and every
error must be problem+json (tests/fuzz/checks.py).

schemathesis' own pytest plugin (`schemathesis.pytest.from_fixture`) does not run under
pytest 9 (it rewrites `Node._nodeid`, which pytest 9 removed), so this test drives the
same per-operation Hypothesis tests itself, one pytest subtest per operation.
"""

from __future__ import annotations

from typing import Any

import pytest
from apiflask import APIFlask
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case
from schemathesis.core.failures import FailureGroup, as_reported_failure
from schemathesis.core.result import Ok
from schemathesis.pytest.lazy import get_all_tests

from tests.fuzz import checks
from tests.fuzz.conftest import Principal, fresh_rate_limits, make_principal


def send(case: Case[Any], credential: str, principal: Principal) -> None:
    """One generated request, as the principal, validated against the document."""
    if case.path_parameters:
        # Assigned, not edited in place, so schemathesis re-validates the case: a negative
        # case whose bad value was a team id it invented becomes the positive one it is.
        ours = principal.path_parameters().items()
        case.path_parameters = {
            **case.path_parameters,
            **{name: value for name, value in ours if name in case.path_parameters},
        }
    # Passed as the call's headers, so schemathesis knows them for explicit credentials
    # (its `ignored_auth` check then retries without them and expects a 401).
    credentials = principal.bearer() if credential == "bearer" else principal.api_key_header()
    fresh_rate_limits()
    case.call_and_validate(
        headers=dict(credentials), additional_checks=[checks.errors_are_problem_json]
    )


def test_every_operation(app: APIFlask, fuzz_schema: BaseSchema, subtests: pytest.Subtests) -> None:
    tests = get_all_tests(
        schema=fuzz_schema,
        test_func=send,
        settings=None,
        given_kwargs={"credential": st.sampled_from(["bearer", "api_key"])},
    )
    principal = make_principal()
    for result in tests:
        assert isinstance(result, Ok), result.err()
        operation, run = result.ok()
        with subtests.test(operation.label):
            # Data piles up from operation to operation (as in real use); only a principal
            # an earlier case damaged (deleted the account, revoked the key, left the
            # team...) is replaced. Emptying every table each time would cost ~0.5 s each.
            if not principal.is_intact():
                principal = make_principal()
            try:
                run(principal=principal)
            except FailureGroup as exc:
                raise as_reported_failure(exc) from None
