"""Stock: items and their adjustment ledger.

Imports services.teams.teams and below.
"""
