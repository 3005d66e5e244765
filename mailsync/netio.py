"""The network edge shared by the SMTP, IMAP and POP3 adapters.

TLS contexts, the classification of socket and TLS errors into ConnectError (the same
words for every protocol, as `mailsync test` prints them), and the guard that keeps a
password out of error texts. Each adapter classifies its own protocol's errors and
calls :func:`network_error` / :func:`fallback_error` for the rest.
"""

from __future__ import annotations

import socket
import ssl

from mailsync.errors import ConnectError

GMAIL_HINT = (
    "Gmail needs a 16-character App Password (Google Account → Security → "
    "App passwords), not the account's normal password"
)


def tls_context(tls_verify: bool) -> ssl.SSLContext:
    """The default context (it honours SSL_CERT_FILE); no checks when tls_verify is off."""
    context = ssl.create_default_context()
    if not tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def network_error(exc: BaseException, where: str, timeout: float, *, connecting: bool,
                  transferring: bool) -> ConnectError | None:
    """The ConnectError of a socket or TLS failure, or None when it is none of those.

    ``where`` names the server (``name (host:port)``); ``connecting``: the failure came
    before the greeting; ``transferring``: a TLS error there means a lost connection.
    """
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{where}: host name not found ({exc.strerror})", "dns")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused", "refused")
    if isinstance(exc, TimeoutError):
        what = "connecting" if connecting else "waiting for the server"
        return ConnectError(f"{where}: timed out after {timeout:g}s {what}", "timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"{where}: TLS certificate verification failed: {exc.verify_message} "
            "(fix the certificate or its CA; tls_verify: false turns the check off)", "tls")
    if isinstance(exc, ssl.SSLError):
        kind = "closed" if transferring else "tls"
        return ConnectError(f"{where}: TLS error: {exc.reason or exc}", kind)
    return None


def fallback_error(exc: BaseException, where: str, *, connecting: bool) -> ConnectError:
    """The last resort: any other OS error, before the greeting or during the session."""
    if isinstance(exc, OSError) and connecting:
        return ConnectError(f"{where}: cannot connect: {exc.strerror or exc}", "refused")
    detail = getattr(exc, "strerror", None) or exc
    return ConnectError(f"{where}: connection error: {detail}", "closed")


def scrubbed(error: ConnectError, secret: str | None) -> ConnectError:
    """Guard against a server (or library) that echoes the password back."""
    if not secret or secret not in str(error):
        return error
    return ConnectError(str(error).replace(secret, "***"), error.kind, error.code)
