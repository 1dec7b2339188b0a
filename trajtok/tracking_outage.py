"""Training outlives its MLflow server: what rank 0 logs while the server is unreachable is kept, not lost.

A tracking server restarts, a login node reboots, a network partitions; none of that may stop a training
job that has hours of GPU time in it. `Outage` runs every logging call of a `Tracker`: when a call fails
because the server cannot be reached (not when the server answers with an error: that stays an error), it
logs one warning, keeps the metrics in `<run_dir>/pending_metrics.jsonl` (on disk: a job that dies during
the outage leaves them for its rerun, which sends them first) and other calls (images, artifacts, the
model) in memory, and tries again after 30 s, doubling up to 5 min, so an outage costs training a failed
request now and then, not one per step. When the server answers, the kept calls go first, in order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException

from trajtok.rundir import PENDING_METRICS_FILE

log = logging.getLogger(__name__)

FIRST_RETRY_S = 30.0
LONGEST_RETRY_S = 300.0
BATCH = 1000  # metrics per log_batch request, MLflow's limit
# MLflow retries a failed request 7 times with exponential backoff (minutes); a job that keeps its own
# record of the outage needs only a short one. Users who set these variables keep theirs.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def is_unreachable(err: BaseException) -> bool:
    """The server could not be reached or did not answer (an answered error is a `RestException`)."""
    return isinstance(err, MlflowException | OSError) and not isinstance(err, RestException)


class Outage:
    """The logging calls of one MLflow run, sent at once or, while the server is unreachable, kept."""

    def __init__(self, uri: str, run_dir: Path, log_batch: Callable[[list[Metric]], None]) -> None:
        self.uri, self.log_batch = uri, log_batch
        self.pending_file = run_dir / PENDING_METRICS_FILE
        self.kept_calls: list[Callable[[], None]] = []
        self.down_since: float | None = None
        self.next_try = 0.0
        self.wait_s = FIRST_RETRY_S
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # urllib3 warns at each retry of a request: the one warning of `_went_down` says it once
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    def metrics(self, metrics: list[Metric]) -> None:
        """Send `metrics`, or keep them on disk while the server is unreachable."""
        if self._send(lambda: self.log_batch(metrics)):
            return
        with self.pending_file.open("a") as stream:
            for m in metrics:
                stream.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")

    def call(self, send: Callable[[], None]) -> None:
        """Run one logging call (an image, an artifact, the model), or keep it while the server is away."""
        if not self._send(send):
            self.kept_calls.append(send)

    def catch_up(self) -> bool:
        """Send what is kept now, whatever the retry schedule (a job's start and end); False if still down."""
        self.next_try = 0.0
        return self._send(lambda: None)

    def _send(self, send: Callable[[], None]) -> bool:
        if self.down_since is not None and time.monotonic() < self.next_try:
            return False
        try:
            if self.down_since is not None or self.pending_file.exists():
                self._send_kept()
            send()
        except Exception as err:
            if not is_unreachable(err):
                raise
            self._went_down(err)
            return False
        return True

    def _send_kept(self) -> None:
        sent = 0
        if self.pending_file.exists():
            rows = [json.loads(line) for line in self.pending_file.read_text().splitlines() if line.strip()]
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in rows]
            for start in range(0, len(metrics), BATCH):
                self.log_batch(metrics[start : start + BATCH])
            self.pending_file.unlink()
            sent = len(metrics)
        while self.kept_calls:
            self.kept_calls[0]()
            self.kept_calls.pop(0)
        if self.down_since is not None or sent:
            log.info("MLflow at %s answers again: sent the %d metrics kept meanwhile", self.uri, sent)
        self.down_since, self.wait_s = None, FIRST_RETRY_S

    def _went_down(self, err: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))  # "Connection refused", "Name or..."
            reason = errno.group(1) if errno else str(err).splitlines()[0][:200]
            log.warning(
                "MLflow at %s is unreachable (%s); training goes on, metrics are kept in %s and sent when it "
                "answers again",
                self.uri,
                reason,
                self.pending_file,
            )
        else:
            self.wait_s = min(2 * self.wait_s, LONGEST_RETRY_S)
        self.next_try = now + self.wait_s
