"""The shared kernel every domain stands on: errors, pagination, the audit chain,
idempotency, commit hooks, signed tokens and the policy tables (plans, permissions).

Imports models and integrations only.
"""
