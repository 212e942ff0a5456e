"""Gunicorn settings for the web process (overridable with GUNICORN_CMD_ARGS)."""

import multiprocessing
import os

# Loopback by default; deployments set BIND (e.g. 0.0.0.0:8000) behind their proxy.
bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
# gthread: a long-lived SSE stream holds a thread, not a whole worker process.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
threads = int(os.environ.get("WEB_THREADS", "8"))
timeout = 30
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so slow leaks cannot accumulate.
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None  # the app logs every request as JSON, with its request id
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
