"""Who is calling: accounts, passwords, sessions and refresh families, API keys, stream
tokens and the profile.

Imports services.teams.teams and below.
"""
