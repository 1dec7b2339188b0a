"""A real `mlflow server` on a free loopback port, for tests that talk to MLflow as its users do."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from trajtok.distributed import free_port


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, port: int | None = None) -> Iterator[str]:
    """Serve `backend_store_uri` (proxied artifacts in `artifacts`) until the block ends; yields its URI.
    A `port` given again serves the same store at the same address (a restarted server)."""
    port = port or free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(artifacts)],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server's workers share its process group, stopped with it
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow server exited with status {server.returncode}"
            assert time.monotonic() < deadline, "mlflow server not healthy after 120 s"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
