"""Operating the system: readiness checks, Prometheus metrics and worker liveness.

Imports services.teams.teams and below.
"""
