"""Teams, memberships, roles and invites.

Imports services.insights and below.
"""
