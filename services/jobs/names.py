"""Every task name, in one place.

A name is `domain.verb`; the domain picks the queue (services/jobs/queues.py). The
name is the contract between the row in `jobs`, the message on the broker and the task
that runs it: renaming one strands whatever is queued under the old name, so these are
only ever added to.
"""

from __future__ import annotations

from typing import Final

# identity
ACCOUNTS_DELETE: Final = "accounts.delete"

# teams
TEAMS_DELETE: Final = "teams.delete"

# billing
PAYMENTS_CHARGE: Final = "payments.charge"
PAYMENTS_REFUND: Final = "payments.refund"
PAYMENTS_RECONCILE: Final = "payments.reconcile"
PAYMENTS_START_RECONCILE: Final = "payments.start_reconcile"
SUBSCRIPTIONS_CREATE: Final = "subscriptions.create"
SUBSCRIPTIONS_CHANGE_PLAN: Final = "subscriptions.change_plan"
SUBSCRIPTIONS_CANCEL: Final = "subscriptions.cancel"
SUBSCRIPTIONS_RESUME: Final = "subscriptions.resume"
SUBSCRIPTIONS_RECONCILE: Final = "subscriptions.reconcile"
SUBSCRIPTIONS_START_RECONCILE: Final = "subscriptions.start_reconcile"
WEBHOOKS_PROCESS: Final = "webhooks.process"

# messaging
EMAIL_SEND: Final = "email.send"
NOTIFICATIONS_FAN_OUT: Final = "notifications.fan_out"
NOTIFICATIONS_SEND_EMAILS: Final = "notifications.send_emails"
NOTIFICATIONS_SEND_DIGESTS: Final = "notifications.send_digests"
NOTIFICATIONS_START_DIGESTS: Final = "notifications.start_digests"

# files
EXPORTS_BUILD: Final = "exports.build"
EXPORTS_CLEANUP: Final = "exports.cleanup"
UPLOADS_PROCESS: Final = "uploads.process"
UPLOADS_DELETE_OBJECT: Final = "uploads.delete_object"
UPLOADS_CLEANUP_PENDING: Final = "uploads.cleanup_pending"

# insights
ANALYTICS_AGGREGATE: Final = "analytics.aggregate"
ANALYTICS_START_AGGREGATE: Final = "analytics.start_aggregate"
REPORTS_SEND: Final = "reports.send"
REPORTS_START_DAILY: Final = "reports.start_daily"
REPORTS_START_WEEKLY: Final = "reports.start_weekly"

# the kernel and the runtime
JOBS_RELAY: Final = "jobs.relay"
JOBS_REAP: Final = "jobs.reap"
AUDIT_SEAL: Final = "audit.seal"
MAINTENANCE_PING: Final = "maintenance.ping"
MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS: Final = "maintenance.cleanup_idempotency_keys"
WORKERS_HEARTBEAT: Final = "workers.heartbeat"
