"""Prometheus metrics of the gateway, served beside BentoML's own on `/metrics`.

Created per worker (in the gateway's ``__init__``), after BentoML has set
``PROMETHEUS_MULTIPROC_DIR``: metrics made at import time would land in a registry that
`/metrics` never reads. `registry=None` because multiprocess collection reads the files, and a
second instance (unit tests) must not clash with the first.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .schema import TranscriptionResponse

_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560)


class GatewayMetrics:
    def __init__(self) -> None:
        self.stage_seconds = Histogram(
            "wxs_stage_duration_seconds", "Wall time of one pipeline stage of one request.",
            labelnames=["stage"], buckets=_STAGE_BUCKETS, registry=None,
        )
        self.audio_seconds = Counter(
            "wxs_audio_seconds", "Seconds of audio transcribed (successful requests).", registry=None,
        )
        self.requests = Counter(
            "wxs_requests", "Finished pipeline requests by outcome (HTTP status).",
            labelnames=["status"], registry=None,
        )
        self.rejected = Counter(
            "wxs_rejected_requests", "Requests answered before any model work, by reason.",
            labelnames=["reason"], registry=None,
        )
        self.audio_in_flight = Gauge(
            "wxs_audio_seconds_in_flight", "Seconds of decoded audio in model work now (the memory budget).",
            multiprocess_mode="livesum", registry=None,
        )
        self.callbacks = Counter(
            "wxs_job_callbacks", "Job callbacks ended, by outcome: delivered, client_error, redirect, "
            "refused, gave_up, taken_over.", labelnames=["outcome"], registry=None,
        )
        self.callback_attempts = Counter(
            "wxs_job_callback_attempts", "Job callback POSTs made (retries included).", registry=None,
        )
        self.in_flight = Gauge(
            "wxs_requests_in_flight", "Requests and jobs doing model work now.",
            multiprocess_mode="livesum", registry=None,
        )

    def observe(self, response: TranscriptionResponse) -> None:
        """One transcribed request: the wall time of each of its stages, and its audio."""
        for stage, timing in response.timings.items():
            self.stage_seconds.labels(stage=stage).observe(timing.end - timing.start)
        self.audio_seconds.inc(response.duration)
