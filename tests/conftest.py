"""Shared fixtures: example config, a CLI runner, the real-servers switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

# The real SMTP server (`smtp_server`) and OAuth2 authorization server (`oauth2_server`)
# fixtures are shared by every test module.
# The real PostgreSQL (`postgres`, and `pg_dsn`: a fresh database per test) too.
pytest_plugins = ["tests.oauth2server", "tests.smtpserver",  # this order: one imports the other
                  "tests.postgres"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"

REQUIRE_SERVERS = os.environ.get("MAILSYNC_REQUIRE_SERVERS") == "1"


def need(condition: bool, why: str) -> None:
    """Skip when a real server is missing; fail instead under MAILSYNC_REQUIRE_SERVERS=1."""
    if not condition:
        if REQUIRE_SERVERS:
            pytest.fail(f"{why} (MAILSYNC_REQUIRE_SERVERS=1)")
        pytest.skip(why)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def example_text() -> str:
    return EXAMPLE.read_text()


@pytest.fixture
def write_config(tmp_path: Path):
    """Write YAML text to tmp_path/config.yaml (or another name) and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
