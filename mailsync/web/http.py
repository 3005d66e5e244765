"""Requests and responses of the admin console over WSGI, and the headers every
response carries.

Every response gets :data:`SECURITY_HEADERS` (a strict Content-Security-Policy: no
script at all, styles and images from the console only, forms posting to it only, no
framing), and pages ``Cache-Control: no-store``. A message's HTML part is the one
response with another policy (:data:`MAIL_HTML_POLICY`): nothing may load, no script
runs, and only the console may frame it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from email.message import EmailMessage
from email.policy import HTTP
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from mailsync import mime
from mailsync.values import field, valueclass

PAGE_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
               "frame-src 'self'; frame-ancestors 'none'; base-uri 'none'")
# Mail HTML: inline styles only (they can load nothing: every fetch directive is 'none'),
# sandboxed (no script, no form, no navigation of the console), framed by it alone.
MAIL_HTML_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'; "
                    "base-uri 'none'; form-action 'none'; sandbox")
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
MAX_FORM = 64 * 1024
MULTIPART = "multipart/form-data"
MAX_DISCARD = 64 * 1024 * 1024   # bytes of a refused body read (and dropped) at most
REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}

StartResponse = Callable[..., Any]


class TooLarge(ValueError):
    """A request body over the limit (the other ValueErrors of a form: it does not parse)."""


class Request:
    """One request: method, path, query, form, cookies, the client's address."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        raw_path = str(environ.get("PATH_INFO", "/"))
        # WSGI gives the path as latin-1 of its bytes: back to UTF-8 text.
        self.path = raw_path.encode("latin-1").decode("utf-8", "replace") or "/"
        self.query = {k: v[-1] for k, v in
                      parse_qs(str(environ.get("QUERY_STRING", ""))).items()}
        self.address = str(environ.get("REMOTE_ADDR", ""))
        self.cookies: dict[str, str] = {}
        try:
            jar: SimpleCookie = SimpleCookie(str(environ.get("HTTP_COOKIE", "")))
            self.cookies = {k: m.value for k, m in jar.items()}
        except CookieError:
            pass
        self._form: dict[str, str] | None = None
        self._lists: dict[str, list[str]] = {}
        self._files: dict[str, Upload] = {}
        # The largest body read: a form's; the application raises it for an upload.
        self.max_body = MAX_FORM

    def header(self, name: str) -> str | None:
        value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return None if value is None else str(value)

    @property
    def form(self) -> dict[str, str]:
        """The body of a POST, urlencoded or ``multipart/form-data`` (its files:
        :attr:`files`), of at most :attr:`max_body` bytes (ValueError past that, or for
        a multipart body that does not parse; read only up to the limit)."""
        if self._form is None:
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > self.max_body:
                raise TooLarge(f"a form of {length} bytes (at most {self.max_body})")
            body = self.environ["wsgi.input"].read(length) if length > 0 else b""
            kind = str(self.environ.get("CONTENT_TYPE") or "")
            if kind.split(";", 1)[0].strip().lower() == MULTIPART:
                self._lists, self._files = parse_multipart(kind, body)
            else:
                self._lists = parse_qs(body.decode("utf-8", "replace"))
            self._form = {k: v[-1] for k, v in self._lists.items()}
        return self._form

    def discard(self, most: int = MAX_DISCARD) -> None:
        """Read and drop the body of a refused POST (at most ``most`` bytes), so that the
        client, still sending it, reads the refusal instead of a reset connection."""
        try:
            left = min(int(self.environ.get("CONTENT_LENGTH") or 0), most)
        except ValueError:
            return
        while left > 0:
            chunk = self.environ["wsgi.input"].read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    @property
    def files(self) -> dict[str, Upload]:
        """The files of a ``multipart/form-data`` POST, by field name."""
        _ = self.form
        return self._files

    def form_list(self, name: str) -> list[str]:
        """Every value of a form field sent several times (a selection's checkboxes)."""
        _ = self.form
        return list(self._lists.get(name, ()))

    def same_origin(self) -> bool:
        """Whether a POST comes from the console's own pages, as far as the browser says:
        ``Sec-Fetch-Site`` where it sends one, else ``Origin`` (``null`` under the
        console's ``Referrer-Policy: no-referrer``); a client that sends neither is let
        through to the CSRF token check."""
        site = self.header("Sec-Fetch-Site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = self.header("Origin")
        if origin is None or origin == "null":
            return True
        host = self.header("Host") or ""
        return origin.split("://", 1)[-1] == host


@valueclass
class Upload:
    """A file sent with a form: the name the browser gave it (as sent: checking it is
    the page's job) and its bytes."""

    filename: str
    data: bytes

    def __repr__(self) -> str:
        return f"Upload({self.filename!r}, {len(self.data)} bytes)"


def parse_multipart(content_type: str, body: bytes
                    ) -> tuple[dict[str, list[str]], dict[str, Upload]]:
    """The fields (as ``parse_qs`` gives them) and files of a ``multipart/form-data``
    body (RFC 7578), parsed by the email package; ValueError naming what is wrong."""
    try:
        message = mime.parse(b"Content-Type: " + content_type.encode("latin-1", "replace")
                             + b"\r\n\r\n" + body, HTTP)
    except mime.TooDeep as exc:  # a form's parts are one level deep
        raise ValueError(f"a multipart/form-data body: {exc}") from None
    if not isinstance(message, EmailMessage) or not message.is_multipart() \
            or message.defects:
        raise ValueError("a multipart/form-data body that does not parse (its boundary?)")
    fields: dict[str, list[str]] = {}
    uploads: dict[str, Upload] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ValueError("a multipart/form-data part without a field name")
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            uploads[name] = Upload(filename, data)
        else:
            fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    return fields, uploads


@valueclass(frozen=False)
class Response:
    """What to send: status, headers, body."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    policy: str = PAGE_POLICY
    cache: str = "no-store"
    framing: str = "DENY"

    def send(self, start_response: StartResponse, *, hsts: bool) -> Iterable[bytes]:
        headers = [("Content-Type", self.content_type),
                   ("Content-Length", str(len(self.body))),
                   ("Content-Security-Policy", self.policy),
                   ("Cache-Control", self.cache),
                   *((k, self.framing if k == "X-Frame-Options" else v)
                     for k, v in SECURITY_HEADERS),
                   *self.headers]
        if hsts:
            headers.append(("Strict-Transport-Security", "max-age=31536000"))
        start_response(f"{self.status} {REASONS.get(self.status, 'Error')}", headers)
        return [self.body]


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A 303 to a path of the console."""
    return Response(303, b"", "text/plain; charset=utf-8",
                    [("Location", location), *(headers or [])])


def text(status: int, message: str) -> Response:
    return Response(status, f"{message}\n".encode(), "text/plain; charset=utf-8")


def download(data: bytes, filename: str,
             content_type: str = "application/octet-stream") -> Response:
    """A file to save, never to show: an attachment (``application/octet-stream``
    unless the console made it: a mail's HTML attachment cannot run in its origin)."""
    safe = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_"
                   for c in filename) or "attachment"
    disposition = f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename)}"
    return Response(200, data, content_type, [("Content-Disposition", disposition)],
                    policy="default-src 'none'; sandbox")


def cookie(name: str, value: str, *, secure: bool, max_age: int | None = None,
           path: str = "/") -> tuple[str, str]:
    """A ``Set-Cookie`` header: HttpOnly, SameSite=Strict, Secure when served over TLS."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "Set-Cookie", "; ".join(parts)
