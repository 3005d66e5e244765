"""The daemon as a subprocess for end-to-end tests: start, scrape, reload, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.outbound_helpers import DEFAULT_ACCOUNTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(tmp_path: Path, servers: str, *, accounts: str | None = None,
                  incoming: str = "", metrics_port: int | None = None,
                  retry: str = "{first: 5m, max: 1h, lifetime: 5d}",
                  users: str = "[alice, bob, carol]") -> str:
    """The text of a config for a daemon under ``tmp_path`` (state, spool, metrics)."""
    accounts = accounts if accounts is not None else DEFAULT_ACCOUNTS
    port = metrics_port if metrics_port is not None else free_port()
    return (f"version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            f"  metrics_listen: 127.0.0.1:{port}\n  retry: {retry}\n"
            f"alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}\n"
            f"users: {users}\noutgoing_servers:\n{servers}"
            + (f"incoming_servers:\n{incoming}" if incoming else "")
            + f"accounts:\n{accounts}")


def wait_until(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll ``check`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(0.02)


class DaemonProcess:
    """``mailsync run -c CONFIG`` in a subprocess, its log in ``log_path``."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path or config.parent / "daemon.log"
        text = config.read_text()
        port = text.split("metrics_listen: 127.0.0.1:", 1)[1].split()[0]
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailsync", "run", "-c", str(config)],
            cwd=config.parent, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited {self.proc.returncode}:\n{self.log}")
            return self.get("/healthz")[0] == 200

        wait_until(healthy, timeout, "the daemon answers /healthz with 200")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) → value."""
        code, text = self.get("/metrics")
        assert code == 200, text
        return self._parse(text)

    @staticmethod
    def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value; None when absent or /metrics cannot be read right now."""
        code, text = self.get("/metrics")
        if code != 200:
            return None
        return self._parse(text).get((name, tuple(sorted(labels.items()))))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.wait()


@pytest.fixture(name="daemons")
def daemons_fixture() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons (``daemons(config, **DaemonProcess options)``), each healthy before it
    is returned; those still running are killed at teardown."""
    started: list[DaemonProcess] = []

    def start(config: Path, **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(config, **kwargs)
        started.append(d)
        d.wait_healthy()
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.kill()
