"""The API's own traffic for /metrics, by route template (never by raw path, so 10,000 job
ids make one series, not 10,000):

ganforge_http_requests_total{method,route,status}          requests answered
ganforge_http_request_duration_seconds{method,route}        time to the end of the response

A pure ASGI middleware (no BaseHTTPMiddleware: streamed answers such as the event stream
pass through untouched), outermost, so requests the host guard refuses count too. A path no
route matches is `route="unmatched"`; a method outside HTTP's usual ones is `method="other"`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # an older FastAPI: app.router.routes is flat already
    iter_route_contexts = None  # type: ignore[assignment]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Seconds: from a cached health check to a zip of every sample of a long run.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class HttpMetrics(Collector):
    """The counters of one app (each app its own, so tests' apps never share a count)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ganforge_http_requests",
            "HTTP requests answered by the API, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "ganforge_http_request_duration_seconds",
            "Time the API took to answer, by method and route template.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


class RouteTable:
    """The app's routes flattened to (pattern, template, methods), in routing order: the
    template of the route that served, or would have served, a request (also one the guard
    refused before routing). Read from the app at the first request, when all are added."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._table: list[tuple[re.Pattern[str], str, frozenset[str] | None]] | None = None

    def _build(self) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
        flat: Iterable[Any] = self._routes
        if iter_route_contexts is not None:  # FastAPI >= 0.165 nests included routers
            flat = iter_route_contexts(self._routes)
        table = []
        for route in flat:
            pattern, template = (
                getattr(route, "path_regex", None),
                getattr(route, "path_format", None),
            )
            if pattern is None or not isinstance(template, str):
                continue
            methods = getattr(route, "methods", None)
            table.append((pattern, template, frozenset(methods) if methods else None))
        return table

    def template(self, scope: Scope) -> str:
        if self._table is None:
            self._table = self._build()
        path = scope["path"]
        partial = None
        for pattern, template, methods in self._table:
            if pattern.match(path):
                if methods is None or scope["method"] in methods:
                    return template
                partial = partial or template  # the path matched, the method did not (405)
        return partial or UNMATCHED


class RecordHttpMetrics:
    """ASGI middleware: count and time every HTTP request into `metrics`."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, RouteTable(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Before the app runs: routing rewrites the scope (a mount moves its prefix out).
        method = scope["method"] if scope["method"] in METHODS else "other"
        template = self.routes.template(scope)
        status = 500  # an exception before any answer is what the client sees as a 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.metrics.observe(method, template, status, time.perf_counter() - started)

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                record()

        try:
            await self.app(scope, receive, watch)
        finally:
            record()  # a stream the client left, or an exception
