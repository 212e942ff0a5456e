"""The worker and beat runtime: the leader-elected beat scheduler, the graceful drain on
SIGTERM and the consumption heartbeat behind worker liveness. No task lives here."""
