"""The job kernel: enqueue and the outbox, the runner (claim, heartbeat, settle, backoff),
relay and reaper, dead letters, the queries the API reads, the job errors and every
task name. What happens when a job settles is announced through signals
(services/jobs/signals.py) that create_app connects; the kernel imports no domain.

Imports services.core, models and integrations.
"""
