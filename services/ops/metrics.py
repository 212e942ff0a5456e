"""Prometheus metrics for `GET /metrics`, read from shared state when Prometheus scrapes.

Web and worker processes are many and short-lived; what they count is kept in Redis (or
PostgreSQL), and one collector reads it at scrape time, so every web process exposes the
same totals and no per-process registry needs aggregating. The one exception is the HTTP
layer's own counters (`blueprints.common.http_metrics`, in-process and per request), which
the /metrics view passes in. To add metric families,
write a function yielding prometheus_client families and name it in SOURCES; a source
that fails is logged and reported as `maycole_metrics_source_up{source=...} 0`, and the
other sources are still exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from extensions import db, redis
from logs import get_logger
from services.insights import dashboard
from services.ops import metric_sources

log = get_logger(__name__)

Source = Callable[[], Iterable[Metric]]


def dashboard_cache() -> Iterator[Metric]:
    """Dashboard reads served from the cache or computed (the dashboard service counts them)."""
    counts = cast(list[bytes | None], redis.client.mget(dashboard.HITS_KEY, dashboard.MISSES_KEY))
    hits, misses = (int(raw or 0) for raw in counts)
    requests = CounterMetricFamily(
        "maycole_dashboard_cache_requests", "Dashboard reads by cache result.", labels=["result"]
    )
    requests.add_metric(["hit"], hits)
    requests.add_metric(["miss"], misses)
    yield requests
    if hits + misses:  # no ratio before the first read (absent, rather than a false 0)
        yield GaugeMetricFamily(
            "maycole_dashboard_cache_hit_ratio",
            "Share of dashboard reads served from the cache, since counting began.",
            value=hits / (hits + misses),
        )


SOURCES: Mapping[str, Source] = {
    "dashboard_cache": dashboard_cache,
    "tasks": metric_sources.tasks,
    "queues": metric_sources.queues,
    "jobs": metric_sources.jobs,
    "breakers": metric_sources.breakers,
    "beat": metric_sources.beat,
    "business": metric_sources.business,
}


class SharedStateCollector:
    """Runs every source at scrape time (prometheus_client's custom-collector protocol)."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "maycole_metrics_source_up",
            "1 if the source could be read at this scrape, else 0.",
            labels=["source"],
        )
        for name, source in self._sources.items():
            try:
                families = list(source())
            except Exception as exc:  # noqa: BLE001 - one broken source must not blind the rest
                log.warning("metrics_source_failed", source=name, error=type(exc).__name__)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


# Our own registry, not the global default one: no per-process collectors whose numbers
# would depend on which web process happened to answer the scrape.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(SharedStateCollector(SOURCES))


class _Combined:
    """Several registries exposed as one."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self._registries:
            yield from registry.collect()


def render(accept: str | None, *extra: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition (Prometheus text, or OpenMetrics if `accept` asks) and its type;
    `extra` adds registries kept elsewhere (the web processes' HTTP metrics)."""
    encode, content_type = choose_encoder(accept or "")
    try:
        return encode(_Combined([REGISTRY, *extra])), content_type  # type: ignore[arg-type]
    finally:
        db.session.remove()  # the sources' reads: no transaction left open in the pool
