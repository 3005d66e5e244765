"""The daemon the demo runs: ``mailsync run`` as a child process, watched over /healthz."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mailsync.demo.sink import HOST


class DemoFailed(Exception):
    """The demo could not go on; the message says why (and what to look at)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _opener() -> urllib.request.OpenerDirector:
    # Loopback only: never through an http_proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with _opener().open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def show(path: Path) -> str:
    """``path`` relative to the current directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def command_name() -> str:
    """How the user runs mailsync from here: ``mailsync``, or the venv's script."""
    here = Path(sys.executable).parent / "mailsync"
    found = shutil.which("mailsync")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "mailsync"
    if here.exists():
        return show(here)
    return f"{show(Path(sys.executable))} -m mailsync"


def _daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mailsync", "run", "-c", str(config)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # the demo's daemon is not systemd's
    env.pop("MAILSYNC_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"


class DaemonProcess:
    """The ``mailsync run`` child: its own session, so a Ctrl-C reaches only the demo,
    which then stops it with SIGTERM as systemd would."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(_daemon_command(config), stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=config.parent, env=child_env(),
                                         start_new_session=True)

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DemoFailed(f"the daemon exited with status {code}; the end of "
                             f"{show(self.log)}:\n{tail(self.log)}")

    def wait_healthy(self, url: str, timeout: float) -> float:
        start = time.monotonic()
        last = "no answer"
        while time.monotonic() - start < timeout:
            self.check_alive()
            try:
                code, body = http_get(url, timeout=1.0)
            except (OSError, urllib.error.URLError) as exc:
                last = str(getattr(exc, "reason", exc))
            else:
                if code == 200:
                    return time.monotonic() - start
                last = f"{code} {body.strip()}"
            time.sleep(0.05)
        raise DemoFailed(f"the daemon did not answer {url} with 200 within {timeout:.0f} s "
                         f"(last: {last}); the end of {show(self.log)}:\n{tail(self.log)}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -int(signal.SIGKILL)
        return int(self.proc.returncode)

