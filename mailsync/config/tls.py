"""Semantic checks of the TLS keys of servers and of the daemon's defaults.

A CA file is checked when it exists here: one that holds no certificate is an error. One
that does not exist is not reported (like secret files: CI validates the file where the
production CA bundle is absent); `mailsync test` and the connection say so. Keys that
cannot work together are errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

from mailsync.config.model import Tls
from mailsync.config.problems import Path, Severity

Finding = tuple[Severity, Path, str]

KEYS = ("tls_ca_file", "tls_ca_only", "tls_client_cert", "tls_client_key", "tls_min_version")
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def ca_file(path: Path, file: FsPath | None) -> Iterator[Finding]:
    """A ``tls_ca_file`` that is not a PEM bundle of certificates."""
    if file is None:
        return
    try:
        with open(file, "rb") as f:
            head = f.read(1 << 20)
    except OSError:  # absent or unreadable here: checked where the daemon runs
        return
    if _PEM_CERT not in head:
        yield ("error", path + ("tls_ca_file",),
               f"{file} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA "
               "certificates in PEM form")


def server(path: Path, raw: dict[str, Any], tls: Tls, security: str | None
           ) -> Iterator[Finding]:
    """The TLS keys of one server (or an account's own login)."""
    own = [k for k in KEYS if k in raw]
    if security == "none" and own:
        yield ("error", path + (own[0],),
               f"{own[0]} applies to TLS, and security is none: set security to starttls "
               "or ssl, or remove it")
        return
    if "tls_ca_file" in raw:
        yield from ca_file(path, tls.ca_file)
    if raw.get("tls_ca_only") and tls.ca_file is None:
        yield ("error", path + ("tls_ca_only",),
               "tls_ca_only: true needs tls_ca_file (here or in daemon): without it no "
               "certificate would be trusted")
    if "tls_client_key" in raw and "tls_client_cert" not in raw:
        yield ("error", path + ("tls_client_key",),
               "tls_client_key needs tls_client_cert (the certificate it is the key of)")


def daemon(raw: dict[str, Any], tls: Tls) -> Iterator[Finding]:
    """The daemon's TLS defaults."""
    path: Path = ("daemon",)
    if "tls_ca_file" in raw:
        yield from ca_file(path, tls.ca_file)
    if raw.get("tls_ca_only") and "tls_ca_file" not in raw:
        yield ("error", path + ("tls_ca_only",),
               "tls_ca_only: true needs daemon.tls_ca_file: without it no certificate "
               "would be trusted")
