"""Prometheus metrics of one Convert server (prometheus-client), in a registry of its own so
that two servers in one process (the tests) never share counters.

    s2a_serving_requests_total{method, code}      calls answered, by gRPC status name
    s2a_serving_request_seconds{method}           latency histogram, whole call
    s2a_serving_batch_size                        images per engine run (histogram)
    s2a_serving_queue_depth                       images waiting for a batch (gauge)
    s2a_serving_model_info{name, version, engine} 1 for the model serving now
    s2a_serving_model_version{name}               its version number
    s2a_serving_swaps_total{outcome}              ok / failed

Example::

    metrics = ServingMetrics()
    metrics.serve(9480, "127.0.0.1")          # GET http://127.0.0.1:9480/metrics
    metrics.text()                            # the exposition, for tests
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """The server's metrics (see the module docstring); labels never hold image data or
    subject ids."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "s2a_serving_requests",
            "Calls answered, by method and gRPC status",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "s2a_serving_request_seconds",
            "Call latency in seconds, from arrival to answer",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "s2a_serving_batch_size",
            "Images per engine run",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "s2a_serving_queue_depth", "Images waiting for a batch", registry=self.registry
        )
        self.model_info = Gauge(
            "s2a_serving_model_info",
            "1 for the model serving now",
            ["name", "version", "engine"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "s2a_serving_model_version",
            "Version number of the model serving now",
            ["name"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "s2a_serving_swaps",
            "Model swaps by outcome (failed: the old model kept serving)",
            ["outcome"],
            registry=self.registry,
        )
        self._http: Any = None

    def set_model(self, name: str, version: int, engine: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=str(version), engine=engine).set(1)
        self.model_version.labels(name=name).set(version)

    def value(self, metric: str, /, **labels: str) -> float:
        """One sample's value (0 when absent), e.g. ``value("s2a_serving_swaps_total",
        outcome="failed")``."""
        found = self.registry.get_sample_value(metric, labels)
        return float(found) if found is not None else 0.0

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: any free port); returns the
        port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
