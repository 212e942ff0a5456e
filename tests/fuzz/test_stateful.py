"""Chains of linked calls: create an item, then read, edit, adjust and delete *that* item.

The document declares no OpenAPI links of its own; schemathesis infers them from the
schemas (its dependency analysis: `POST .../inventory` answers an `item.id` that
`GET .../inventory/{item_id}` takes, and so on), so scenarios reach resources that exist
instead of ids that 404. Every step gets the same checks as the stateless test.
"""

from __future__ import annotations

from typing import Any

import hypothesis
from apiflask import APIFlask
from schemathesis import BaseSchema, Case
from schemathesis.core.failures import FailureGroup, as_reported_failure

from tests.fuzz import checks, profile
from tests.fuzz.conftest import Principal, fresh_rate_limits, make_principal


def test_linked_operations(app: APIFlask, fuzz_schema: BaseSchema) -> None:
    failures: dict[str, FailureGroup] = {}
    scenarios_run: list[int] = []

    class Scenario(fuzz_schema.as_state_machine()):  # type: ignore[misc]
        principal: Principal

        def setup(self) -> None:
            scenarios_run.append(1)
            # A scenario may delete the account or the team; the next starts afresh.
            self.principal = make_principal()

        def before_call(self, case: Case[Any]) -> None:
            # Ids come from earlier responses through the links; a team id that is not one
            # of the principal's (an invented one, or a link that does not carry it) is
            # replaced by theirs, or team routes would only ever answer 404.
            team_id = (case.path_parameters or {}).get("team_id")
            if team_id is not None and team_id not in self.principal.team_ids():
                case.path_parameters = {**case.path_parameters, "team_id": self.principal.team}
            fresh_rate_limits()

        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {"headers": dict(self.principal.bearer())}

        def validate_response(self, response: Any, case: Case[Any], **kwargs: Any) -> None:
            # The credentials go in as `headers`, as `call_and_validate` passes them, so the
            # `ignored_auth` check knows them for real ones and retries without them.
            try:
                case.validate_response(
                    response,
                    headers=kwargs.get("headers"),
                    additional_checks=[checks.errors_are_problem_json],
                    transport_kwargs=kwargs,
                    recorder=self.recorder,
                )
            except FailureGroup as exc:
                # Kept, not raised: Hypothesis would replay the failing scenario, which
                # draws differently against a database earlier scenarios changed, and
                # report FlakyStrategyDefinition instead of this failure.
                failures.setdefault(str(exc), exc)

    current = profile.current()
    for _attempt in range(10):
        try:
            Scenario.run(
                settings=hypothesis.settings(
                    max_examples=max(current.scenarios - len(scenarios_run), 1),
                    stateful_step_count=current.steps,
                    deadline=None,
                    database=None,
                    phases=[hypothesis.Phase.generate],  # no shrinking (see validate_response)
                    suppress_health_check=list(hypothesis.HealthCheck),
                )
            )
        except hypothesis.errors.Flaky:
            # Which links can be followed depends on what the database answered, so
            # Hypothesis may find its choice tree inconsistent and give up: not a finding.
            # Start a new run for the scenarios left, as schemathesis' own runner does.
            if len(scenarios_run) < current.scenarios:
                continue
        break
    for failure in failures.values():
        raise as_reported_failure(failure)
