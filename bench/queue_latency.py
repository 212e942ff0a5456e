"""B3, queue latency (bench/b_queue.py): the `maintenance.ping` probe through gunicorn,
from its message's publication (Celery's `task-sent` event) to the worker's claim, idle
and under B1-like load of export requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench.harness import Gunicorn, Row, say, wrk
from bench.queue_tools import ApiClient, BenchWorker, QueueBench, Sample, SentEvents, percentile
from celeryconfig import EXPORTS, QUEUES

IDLE_WARMUP = 20
IDLE_SAMPLES = 200
LOAD_SECONDS = 12
LOAD_CONNECTIONS = 32  # B1's
SAMPLE_INTERVAL = 0.05


class LatencyBench(QueueBench):
    """B3."""

    def b3(self) -> list[Row]:
        queues = [q for q in QUEUES if q != EXPORTS]
        worker = BenchWorker(self.settings, "b3", queues)
        with Gunicorn(self.settings, "queue-app") as web, SentEvents() as events:
            worker.start()
            try:
                client = ApiClient(web.port, self.token)
                say(f"B3 idle: {IDLE_SAMPLES} sequential pings ...")
                for _ in range(IDLE_WARMUP):
                    self._wait_finished(client.ping().job_id, worker)
                idle = []
                for _ in range(IDLE_SAMPLES):
                    sample = client.ping()
                    time.sleep(0.02)
                    self._wait_finished(sample.job_id, worker)
                    idle.append(sample)
                client.close()
                say(f"B3 under load: wrk -c{LOAD_CONNECTIONS} POST exports, {LOAD_SECONDS} s ...")
                loaded, load = self._sample_under_load(web)
                for sample in loaded:
                    self._wait_finished(sample.job_id, worker, timeout=120)
            finally:
                worker.stop()
        self._drop_export_backlog()
        idle_ms = self._latencies(idle, events.sent)
        load_ms = self._latencies(loaded, events.sent)
        return [
            Row("B3", "queue latency idle (job published -> task running), p50",
                percentile(idle_ms, 50), "ms", target="<= 5 ms",
                met=percentile(idle_ms, 50) <= 5,
                notes=f"{self._latency_notes(idle, idle_ms)}; "
                f"{events.stages([s.job_id for s in idle])}"),
            Row("B3", "queue latency under B1 load (published -> running), p99",
                percentile(load_ms, 99), "ms", target="<= 50 ms",
                met=percentile(load_ms, 99) <= 50,
                notes=f"load: wrk -c{LOAD_CONNECTIONS} POST /teams/<id>/exports, "
                f"{load.requests_per_second:,.0f} req/s, p99 {load.p99_ms:.1f} ms, "
                f"{load.errors} errors; {self._latency_notes(loaded, load_ms)}; "
                f"{events.stages([s.job_id for s in loaded])}"),
        ]  # fmt: skip

    def _sample_under_load(self, web: Gunicorn) -> tuple[list[Sample], Any]:
        samples: list[Sample] = []
        stop = threading.Event()

        def sampler() -> None:
            client = ApiClient(web.port, self.token)
            time.sleep(1)  # let wrk ramp up first
            while not stop.is_set():
                samples.append(client.ping())
                stop.wait(SAMPLE_INTERVAL)
            client.close()

        thread = threading.Thread(target=sampler, name="b3-sampler")
        thread.start()
        try:
            load = wrk(
                f"{web.url}/api/v1/teams/{self.team_id}/exports",
                connections=LOAD_CONNECTIONS, seconds=LOAD_SECONDS, method="POST",
                body=json.dumps({"resource": "analytics", "format": "csv"}),
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/json"},
            )  # fmt: skip
        finally:
            stop.set()
            thread.join()
        return samples, load

    def _started(self, samples: Sequence[Sample]) -> dict[str, float]:
        rows = self.conn.execute(
            "SELECT id::text, extract(epoch FROM started_at)::float8 FROM jobs "
            "WHERE id = ANY(%s::uuid[])",
            ([s.job_id for s in samples],),
        ).fetchall()
        return dict(rows)

    def _latencies(self, samples: Sequence[Sample], published: dict[str, float]) -> list[float]:
        """Per sample: ms from its message's publication to the worker's claim."""
        missing = [s.job_id for s in samples if s.job_id not in published]
        if missing:
            raise RuntimeError(f"no task-sent event for {len(missing)} jobs, e.g. {missing[0]}")
        started = self._started(samples)
        return [(started[s.job_id] - published[s.job_id]) * 1000 for s in samples]

    def _latency_notes(self, samples: Sequence[Sample], latencies: Sequence[float]) -> str:
        started = self._started(samples)
        after_202 = [max(0.0, started[s.job_id] - s.received) * 1000 for s in samples]
        request = [(s.received - s.sent) * 1000 for s in samples]
        return (
            f"{len(samples)} samples; p50 {percentile(latencies, 50):.2f} ms, "
            f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.1f} ms; "
            f"202 -> running: p50 {percentile(after_202, 50):.2f} ms, "
            f"p99 {percentile(after_202, 99):.2f} ms "
            f"({sum(1 for v in after_202 if v == 0)} already running at the 202); "
            f"POST p50 {percentile(request, 50):.1f} ms"
        )

    def _drop_export_backlog(self) -> None:
        """The load's export jobs: their messages go, their rows are cancelled."""
        self.broker.delete(EXPORTS)
        self.conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now() "
            "WHERE type = 'exports.build' AND status = 'queued' AND team_id = %s",
            (self.team_id,),
        )
