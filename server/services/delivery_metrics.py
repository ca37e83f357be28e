"""Prometheus metrics of the delivery path, registered on the app's own registry.

=====================================  =========  ==========================================================
name                                   type       meaning
=====================================  =========  ==========================================================
``saltline_ws_connections``            gauge      WebSocket connections authenticated and not yet released
``saltline_queue_depth``               gauge      queue rows waiting in the database (all devices; sampled
                                                  by the maintenance task and on scrape-independent events)
``saltline_queue_depth_on_connect``    histogram  a device's pending queue rows when it connects
``saltline_envelopes_accepted_total``  counter    stored envelopes accepted (not replays)
``saltline_ephemeral_envelopes_total`` counter    ephemeral envelopes accepted (never stored)
``saltline_envelopes_delivered_total`` counter    queue entries acknowledged by their device
``saltline_delivery_latency_seconds``  histogram  server accept -> device acknowledgement
``saltline_heartbeat_reaps_total``     counter    connections closed for missed pongs
``saltline_ws_closes_total``           counter    connections closed, by ``reason``
``saltline_queue_purged_total``        counter    queue entries dropped by retention
``saltline_group_commit_batch_size``   histogram  jobs (sends + acks) per group-commit transaction
=====================================  =========  ==========================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "saltline_ws_connections",
            "WebSocket connections authenticated and open",
            registry=registry,
            multiprocess_mode="livesum",  # serve --workers N: the live workers' sockets
        )
        self.queue_depth = Gauge(
            "saltline_queue_depth",
            "Queue rows waiting in the database",
            registry=registry,
            # serve --workers N: each worker holds the count it last read from the database plus
            # its own changes since; the largest of the living workers' is shown (the figure is
            # approximate between two maintenance reads anyway; "mostrecent" would forbid
            # inc/dec). "live": a dead worker's figure, stale for good, must not stay the largest.
            multiprocess_mode="livemax",
        )
        self.queue_depth_on_connect = Histogram(
            "saltline_queue_depth_on_connect",
            "Pending queue rows of a device when it connects",
            buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000),
            registry=registry,
        )
        self.accepted = Counter("saltline_envelopes_accepted", "Stored envelopes accepted", registry=registry)
        self.ephemeral = Counter(
            "saltline_ephemeral_envelopes", "Ephemeral envelopes accepted (never stored)", registry=registry
        )
        self.delivered = Counter(
            "saltline_envelopes_delivered", "Queue entries acknowledged by their device", registry=registry
        )
        self.latency = Histogram(
            "saltline_delivery_latency_seconds",
            "Server accept to device acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
            registry=registry,
        )
        self.heartbeat_reaps = Counter(
            "saltline_heartbeat_reaps", "Connections closed for missed pongs", registry=registry
        )
        self.closes = Counter(
            "saltline_ws_closes", "WebSocket connections closed, by reason", ["reason"], registry=registry
        )
        self.purged = Counter(
            "saltline_queue_purged", "Queue entries dropped by retention", registry=registry
        )
        self.batch_size = Histogram(
            "saltline_group_commit_batch_size",
            "Jobs per group-commit transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
