"""The network edge shared by the SMTP, IMAP and POP3 adapters.

TLS contexts and the classification of socket and TLS errors into ConnectError (the
same words for every protocol, as `mailsync test` prints them; the guard that keeps a
password out of error texts is :class:`mailsync.errors.WireGuard`). Each adapter
classifies its own protocol's errors and calls :func:`network_error` /
:func:`fallback_error` for the rest. The command deadlines they keep to are
:mod:`mailsync.deadline`'s.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

from mailsync.config.model import Tls
from mailsync.config.secrets import Secret
from mailsync.deadline import DeadlineExceeded
from mailsync.errors import ConnectError, SecretError

GMAIL_HINT = (
    "Gmail needs a 16-character App Password (Google Account → Security → "
    "App passwords), not the account's normal password"
)


_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
_DEFAULT_CAFILE = ssl.get_default_verify_paths().openssl_cafile
_contexts_lock = threading.Lock()


def tls_context(tls_verify: bool, tls: Tls | None = None) -> ssl.SSLContext:
    """The client context of a server's TLS settings: the system's CAs (and SSL_CERT_FILE)
    plus ``tls.ca_file``, or that file only with ``ca_only``; ``tls.min_version`` at the
    least; the client certificate if one is set; no checks when tls_verify is off.

    Contexts are shared by the connections of equal settings (loading the system's CAs
    costs milliseconds), and made again when a file they were made from changes (the
    CA file, the system's bundle, SSL_CERT_FILE).
    ConnectError(kind="tls") names the setting whose file is missing or not PEM.
    """
    tls = tls or Tls()
    cert = _pem(tls.client_cert, "tls_client_cert")
    key = _pem(tls.client_key, "tls_client_key")
    # The files a context was made from: the server's CA file, and the system's store
    # (SSL_CERT_FILE or OpenSSL's default bundle, updated by ca-certificates).
    system = os.environ.get("SSL_CERT_FILE") or _DEFAULT_CAFILE
    ca_stamp = (_stamp(tls.ca_file) if tls.ca_file is not None else None,
                system, _stamp(Path(system)) if system else None,
                os.environ.get("SSL_CERT_DIR"))
    cache_key = (tls_verify, tls.ca_file, tls.ca_only, tls.min_version, ca_stamp,
                 hashlib.sha256(cert.encode()).digest() if cert else None,
                 hashlib.sha256(key.encode()).digest() if key else None)
    with _contexts_lock:
        context = _contexts.get(cache_key)
    if context is not None:
        return context
    context = _make_context(tls_verify, tls, cert, key)
    with _contexts_lock:
        if len(_contexts) >= 64:  # settings changed many times: start over
            _contexts.clear()
        _contexts[cache_key] = context
    return context


def _make_context(tls_verify: bool, tls: Tls, cert: str | None,
                  key: str | None) -> ssl.SSLContext:
    if tls.ca_only and tls.ca_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system CAs
    else:
        context = ssl.create_default_context()
    context.minimum_version = _VERSIONS[tls.min_version]
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except FileNotFoundError:
            raise ConnectError(f"tls_ca_file {tls.ca_file} does not exist", "tls") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConnectError(f"tls_ca_file {tls.ca_file} is not a readable PEM file of CA "
                               f"certificates ({_reason(exc)})", "tls") from None
    if cert is not None:
        _load_client_cert(context, cert, key)
    if not tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _pem(secret: Secret | None, what: str) -> str | None:
    """The PEM text of a client certificate or key reference."""
    if secret is None:
        return None
    try:
        return secret.resolve()
    except SecretError as exc:
        raise ConnectError(f"{what}: {exc}", "tls") from None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """``load_cert_chain`` reads files only: the PEM texts go through anonymous memory
    files (memfd, never on a disk), readable by this process alone."""
    fds: list[int] = []
    try:
        paths = []
        for name, text in (("tls_client_cert", cert), ("tls_client_key", key)):
            if text is None:
                continue
            fd = os.memfd_create(f"mailsync-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, text.encode() + b"\n")
            paths.append(f"/proc/self/fd/{fd}")
        try:
            context.load_cert_chain(paths[0], paths[1] if len(paths) > 1 else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConnectError(
                "tls_client_cert/tls_client_key: not a PEM certificate and its unencrypted "
                f"private key ({_reason(exc)})", "tls") from None
    finally:
        for fd in fds:
            os.close(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or "bad PEM")
    return str(getattr(exc, "strerror", None) or exc)


def connection_note(security: str | None, sock: object) -> str:
    """What `mailsync test` says of a connection: ``STARTTLS, TLSv1.3, certificate valid
    until 2027-03-01``, ``implicit TLS, ...`` or ``plain text``."""
    if not isinstance(sock, ssl.SSLSocket):
        return "plain text"
    label = "STARTTLS" if security == "starttls" else "implicit TLS"
    version = sock.version() or "TLS"
    cert = sock.getpeercert()  # empty when not verified (tls_verify: false)
    if cert and "notAfter" in cert:
        until = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), UTC)
        return f"{label}, {version}, certificate valid until {until.date().isoformat()}"
    return f"{label}, {version}, certificate not checked (tls_verify: false)"


def helo_name(configured: str | None) -> str | None:
    """The EHLO name: the configured one, else this machine's FQDN when it has one; None
    lets smtplib send the connection's address literal (``[192.0.2.1]``, RFC 5321 4.1.4)."""
    if configured:
        return configured
    fqdn = _machine_fqdn()
    return fqdn if "." in fqdn.strip(".") else None


@functools.lru_cache(maxsize=1)
def _machine_fqdn() -> str:
    return socket.getfqdn()


def network_error(exc: BaseException, where: str, timeout: float, *, connecting: bool,
                  transferring: bool, handshaking: bool) -> ConnectError | None:
    """The ConnectError of a socket or TLS failure, or None when it is none of those.

    ``where`` names the server (``name (host:port)``); ``connecting``: the failure came
    before the greeting; ``transferring``: a TLS error there means a lost connection;
    ``handshaking``: in a TLS handshake or the first reply after it (connecting, STARTTLS
    and the EHLO over TLS: where a server that refuses the TLS version or the client
    certificate hangs up).
    """
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{where}: host name not found ({exc.strerror})", "dns")
    if isinstance(exc, DeadlineExceeded):
        return ConnectError(f"{where}: {exc}", "timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused", "refused")
    if isinstance(exc, TimeoutError):
        what = "connecting" if connecting else "waiting for the server"
        return ConnectError(f"{where}: timed out after {timeout:g}s {what}", "timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"{where}: TLS certificate verification failed: {exc.verify_message} (a private "
            "CA: trust it with tls_ca_file; else fix the server's certificate; tls_verify: "
            "false turns the check off)", "tls")
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "WRONG_VERSION_NUMBER" and connecting:
            return ConnectError(
                f"{where}: the server answered in plain text, not TLS: this port speaks "
                "the protocol first (security: starttls, or none), or use the port of "
                "implicit TLS with security: ssl", "tls")
        if exc.reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                          "NO_PROTOCOLS_AVAILABLE"):
            return ConnectError(
                f"{where}: TLS error: the server offers only TLS versions older than "
                "tls_min_version (default TLSv1.2)", "tls")
        if exc.reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE",
                          "SSLV3_ALERT_BAD_CERTIFICATE") and not transferring:
            return ConnectError(
                f"{where}: TLS error: the server refused the connection's certificate "
                f"({exc.reason}): it wants a client certificate it trusts (tls_client_cert, "
                "tls_client_key)", "tls")
        # Earlier Python 3.11 releases (Debian 12's 3.11.2) raise an EOF in the handshake as
        # SSLZeroReturnError ("TLS/SSL connection has been closed (EOF)", no reason).
        eof = exc.reason == "UNEXPECTED_EOF_WHILE_READING" or isinstance(
            exc, ssl.SSLZeroReturnError | ssl.SSLEOFError)
        if eof and handshaking:
            return ConnectError(
                f"{where}: TLS error: the server closed the connection during the TLS "
                "handshake: it may offer only TLS versions older than tls_min_version "
                "(default TLSv1.2), or want a client certificate (tls_client_cert)", "tls")
        if eof:
            return ConnectError(f"{where}: the server closed the connection", "closed")
        kind = "closed" if transferring else "tls"
        return ConnectError(f"{where}: TLS error: {exc.reason or exc}", kind)
    return None


def fallback_error(exc: BaseException, where: str, *, connecting: bool) -> ConnectError:
    """The last resort: any other OS error, before the greeting or during the session."""
    if isinstance(exc, OSError) and connecting:
        return ConnectError(f"{where}: cannot connect: {exc.strerror or exc}", "refused")
    detail = getattr(exc, "strerror", None) or exc
    return ConnectError(f"{where}: connection error: {detail}", "closed")
