"""HTTP for the test OAuth2 server (tests/oauth2server.py), and wire helpers for tests.

:func:`handler_class` turns HTTP requests into calls of the server's ``serve`` method;
:func:`client_credentials` reads client authentication (HTTP Basic or client_secret_post).
For tests that need a token or a SASL string without the client under test:
:func:`post_form`, :func:`xoauth2_string` and :func:`oauthbearer_string`, independent
of mailsync's own code on purpose.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

HOST = "127.0.0.1"
# (endpoint, Authorization header, content type, body) -> (status, JSON answer), or None
# to hang up without an answer.
Serve = Callable[[str, str | None, str, str], tuple[int, dict[str, Any]] | None]


def handler_class(serve: Serve) -> type[BaseHTTPRequestHandler]:
    """A request handler answering POSTs through ``serve`` (HTTP/1.0: one request per
    connection, so stopping the server leaves no idle keep-alive connection)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:  # the "verification page" a user would visit
            self._send(200, {"page": "sign in and enter the code"})

        def do_POST(self) -> None:
            endpoint = urllib.parse.urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            authorization = self.headers.get("Authorization")
            answer = serve(endpoint, authorization, self.headers.get_content_type(), body)
            if answer is None:
                self.close_connection = True
                return
            basic = (authorization or "").lower().startswith("basic ")
            with contextlib.suppress(OSError):  # a client that gave up on a stall
                self._send(*answer, basic=basic)

        def _send(self, status: int, answer: dict[str, Any], basic: bool = False) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if status == 401:
                self.send_header("WWW-Authenticate",
                                 'Basic realm="oauth2server"' if basic else "Bearer")
            self.end_headers()
            self.wfile.write(data)

    return Handler


def client_credentials(authorization: str | None,
                       form: Mapping[str, str]) -> tuple[str | None, str | None, str]:
    """(client_id, secret, how) from HTTP Basic (RFC 6749 2.3.1: form-encoded, then
    base64; how = client_secret_basic), the form (client_secret_post) or neither (none:
    a public client's client_id alone)."""
    if authorization and authorization.lower().startswith("basic "):
        with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
            user, _, password = decoded.partition(":")
            return (urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password),
                    "client_secret_basic")
        return None, None, "client_secret_basic"
    if "client_secret" in form:
        return form.get("client_id"), form["client_secret"], "client_secret_post"
    return form.get("client_id"), None, "none"


def post_form(url: str, form: Mapping[str, str], *, basic: tuple[str, str] | None = None,
              timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST a form (HTTP Basic client auth when ``basic``): (status, JSON answer)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        pair = ":".join(urllib.parse.quote_plus(x) for x in basic)
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def xoauth2_string(user: str, token: str) -> bytes:
    """The XOAUTH2 initial response (before base64): ``user=U^Aauth=Bearer T^A^A``."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer_string(user: str, token: str, host: str = HOST, port: int = 0) -> bytes:
    """The RFC 7628 OAUTHBEARER initial response (before base64):
    ``n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A`` (``,`` and ``=`` in U escaped)."""
    escaped = user.replace("=", "=3D").replace(",", "=2C")
    return (f"n,a={escaped},\x01host={host}\x01port={port}\x01auth=Bearer {token}"
            "\x01\x01").encode()
