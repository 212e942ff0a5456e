"""Money: payments, subscriptions, the Stripe webhook mirror and reconciliation.

Imports services.teams.teams and below.
"""
