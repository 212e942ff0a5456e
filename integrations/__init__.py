"""The outside world behind small interfaces: payment gateway, SMTP, object storage."""
