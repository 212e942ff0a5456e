"""What every blueprint shares: problem+json errors, request ids, auth, idempotency, paging."""
