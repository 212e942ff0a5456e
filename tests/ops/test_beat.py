"""Two beats at once (a deploy overlap): one sends, the other stands by and takes over
as soon as the leader exits cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import redis as redis_lib

from config import Settings
from services.jobs.metrics import BEAT_LAST_TICK_KEY
from tasks.runtime.beat_scheduler import LEADER_KEY, LEASE_SECONDS
from tests.support import ROOT, PrivateStacks, settings_env, wait_for


def start_beat(settings: Settings, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "beat",
         "--loglevel=INFO", f"--schedule={tmp_path / name}-schedule"],
        cwd=ROOT, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_only_one_beat_leads_and_a_clean_exit_hands_over_at_once(
    private_stack: PrivateStacks, tmp_path: Path
) -> None:
    # Broker and lease store of their own: these beats must not feed the session worker.
    private_redis = private_stack.redis()
    beat_settings = private_stack(
        keep="all", redis_url=private_redis.url(0), celery_broker_url=private_redis.url(1)
    ).settings
    client = redis_lib.Redis.from_url(private_redis.url(0), decode_responses=True)

    def get(key: str) -> str:
        return str(client.get(key) or "")

    first = start_beat(beat_settings, tmp_path, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        leader = wait_for(lambda: get(LEADER_KEY), 30, lambda: "no beat took the lease")
        assert f":{first.pid}:" in leader
        second = start_beat(beat_settings, tmp_path, "second")
        standby_log = tmp_path / "second.log"
        wait_for(lambda: b"beat_standby" in standby_log.read_bytes(), 30)
        ticked = float(wait_for(lambda: get(BEAT_LAST_TICK_KEY), 10))
        wait_for(lambda: float(get(BEAT_LAST_TICK_KEY) or 0) > ticked, 20)
        assert f":{first.pid}:" in get(LEADER_KEY)  # the second only waits

        first.send_signal(signal.SIGTERM)
        first.wait(20)
        # The lease was released, not left to expire: the standby leads well before TTL.
        standby_pid = second.pid
        wait_for(lambda: f":{standby_pid}:" in get(LEADER_KEY), LEASE_SECONDS / 3)
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                process.kill()
                process.wait()
        client.close()
