"""A spool file's content read (pure, never raises): a ``.json`` document or an ``.eml``
message becomes a :class:`Submission`, or the :class:`Rejection` saying why it is refused.

The directory side (drop, scan, reject, remove) is :mod:`mailsync.outbound.spool`; ``.eml``
files are never re-serialised: only their header block is read and trimmed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from email.header import decode_header, make_header
from typing import Any

from mailsync import mime
from mailsync.outbound.types import Rejection, RejectReason, Submission

_JSON_FIELDS = ("user", "account", "to", "cc", "bcc", "subject", "text", "html", "reply_to",
                "headers", "attachments", "idempotency_key")
# Fields that have their own JSON key or that the MIME builder owns.
_RESERVED_HEADERS = ("to", "cc", "bcc", "subject", "reply-to", "mime-version")
_RESERVED_PREFIXES = ("content-", "x-mailsync-")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")             # RFC 5322 ftext
_HEADER_START = re.compile(r"([!-9;-~]+)[ \t]*:")    # obsolete WSP before ':' tolerated
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
# Controls except TAB, and what Python's str.splitlines() (so the email package) breaks on.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
_MIME_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_KINDS: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


class _Refused(Exception):
    """Carries a rejection out of nested validation helpers to :func:`parse`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse(name: str, data: bytes, *, max_size: int) -> Submission | Rejection:
    """Read one spool file's content (pure, never raises): a Submission or why it is refused."""
    if len(data) > max_size:
        return Rejection("oversize", f"{len(data)} bytes is more than the limit of {max_size} "
                                     "bytes (daemon.max_message_size)")
    kind = name.lower()
    try:
        if kind.endswith(".json"):
            return _parse_json(data)
        if kind.endswith(".eml"):
            return _parse_eml(data)
    except _Refused as refused:
        return refused.rejection
    except RecursionError:  # a library's parser on something nested thousands deep
        return Rejection("unparseable", f"{name!r} nests something too deep to be read")
    return Rejection("unparseable", f"{name!r} is neither an .eml nor a .json file")


def _parse_json(data: bytes) -> Submission:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError
        raise _Refused("unparseable", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Refused("unparseable", f"the JSON must be an object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - set(_JSON_FIELDS))
    if unknown:
        raise _Refused("unparseable", f"unknown field {unknown[0]!r} "
                                      f"(allowed: {', '.join(_JSON_FIELDS)})")
    for key in ("user", "to", "subject"):
        if doc.get(key) is None:
            raise _Refused("unparseable", f"missing required field {key!r}")
    user, subject = _field(doc, "user", str), _field(doc, "subject", str)
    account, reply_to = _field(doc, "account", str), _field(doc, "reply_to", str)
    text, html = _field(doc, "text", str), _field(doc, "html", str)
    lists = {f: _field(doc, f, list, []) for f in ("to", "cc", "bcc")}
    headers: dict[str, Any] = _field(doc, "headers", dict, {})
    attachments = _attachments(_field(doc, "attachments", list, []))
    if not user:
        raise _Refused("unparseable", "field 'user' is empty")

    checks = [("user", user), ("subject", subject), ("account", account), ("reply_to", reply_to)]
    checks += [(f"{f}[{i}]", _text(v, f"{f}[{i}]"))
               for f, items in lists.items() for i, v in enumerate(items)]
    checks += [(f"headers[{k!r}]", _text(v, f"headers[{k!r}]")) for k, v in headers.items()]
    checks += [("header name", k) for k in headers]
    for where, value in checks:
        _check_header_value(where, value)
    for hname in headers:
        if not _FIELD_NAME.match(hname):
            raise _Refused("unparseable", f"header name {_show(hname)} is not a valid field name")
        if hname.lower() in _RESERVED_HEADERS or hname.lower().startswith(_RESERVED_PREFIXES):
            raise _Refused("unparseable", f"header {hname!r} cannot be set in 'headers' "
                                          "(use the matching field, or leave it to mailsync)")

    pairs: dict[str, list[tuple[str, str]]] = {}
    for f, items in [*lists.items(), ("reply_to", [] if reply_to is None else [reply_to])]:
        pairs[f] = []
        for i, item in enumerate(items):
            where = f if f == "reply_to" else f"{f}[{i}]"
            found = _addresses(item, where)
            if not found:
                raise _Refused("bad_recipient", f"{where} {_show(item)} holds no address")
            pairs[f] += found
    recipients = [addr for f in ("to", "cc", "bcc") for _, addr in pairs[f]]
    if not recipients:
        raise _Refused("no_recipients", "no address in 'to', 'cc' or 'bcc'")
    try:
        message = _build(pairs, subject, headers, text, html, attachments)
    except Exception as exc:  # the stdlib email package has many odd failure modes
        raise _Refused("unparseable", f"cannot build the message: {exc}") from None
    return Submission(user, account, _unique(recipients), message, subject,
                      _key(_field(doc, "idempotency_key", str)))


def _field(doc: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``doc[key]`` checked to be of ``kind``; ``default`` when absent or null."""
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _Refused("unparseable", f"field {key!r} must be {_KINDS[kind]}, "
                                      f"not {type(value).__name__}")
    return _text(value, f"field {key!r}") if kind is str else value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Refused("unparseable", f"{where} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("unparseable", f"{where} holds an unpaired surrogate") from None
    return value


def _attachments(raw: list[Any]) -> list[tuple[str, str, bytes]]:
    result = []
    for i, item in enumerate(raw):
        where = f"attachments[{i}]"
        if not isinstance(item, dict) or set(item) != {"filename", "content_type",
                                                       "content_base64"}:
            raise _Refused("unparseable", f"{where} must be an object with exactly "
                                          "'filename', 'content_type' and 'content_base64'")
        b64 = _text(item["content_base64"], f"{where}.content_base64")
        try:
            content = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Refused("unparseable", f"{where}.content_base64 is not base64: {exc}") from None
        filename = _text(item["filename"], f"{where}.filename")
        ctype = _text(item["content_type"], f"{where}.content_type")
        _check_header_value(f"{where}.filename", filename)
        _check_header_value(f"{where}.content_type", ctype)
        if not _MIME_TYPE.match(ctype) or ctype.lower().startswith(("multipart/", "message/")):
            raise _Refused("unparseable", f"{where}.content_type {ctype!r} is not a "
                                          "type/subtype content type for a file")
        result.append((filename, ctype, content))
    return result


def _check_header_value(where: str, value: str | None) -> None:
    bad = _BAD_CHAR.search(value or "")
    if bad:
        kind = "a line break" if bad.group() in "\r\n\x85\u2028\u2029" else "a control character"
        raise _Refused("header_injection",
                       f"{where} contains {kind} ({bad.group()!r}): {_show(value)}")


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9.-]+)")
# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets. (A longer one
# no server takes; and the store indexes each recipient's address.)
MAX_ADDRESS = 254
# An idempotency key is a caller's name for one message (a UUID, an order number): one the
# store can index on either backend (store.sql.INDEXED_BYTES), in any script.
MAX_IDEMPOTENCY_KEY = 200


def _addresses(value: str, where: str) -> list[tuple[str, str]]:
    """The (display name, address) pairs in a header value; a malformed one is refused."""
    plain = _PLAIN_ADDRESS.fullmatch(value.strip())
    if plain is not None and _DOMAIN.match(plain.group(1)) and len(value) <= MAX_ADDRESS:
        # The common case, one bare address (its local part has no '@', quote or space):
        # the same answer as email.utils.getaddresses, which costs ~60 µs a call.
        return [("", plain.group(0))]
    found = []
    try:
        pairs = mime.addresses([value])
    except mime.TooDeep as exc:
        raise _Refused("bad_recipient", f"{where}: {_show(value)}: {exc}") from None
    for display, addr in pairs:
        if not addr:
            if display:
                raise _Refused("bad_recipient", f"{where}: {_show(display)} is not an address")
            continue   # an empty group such as "undisclosed-recipients:;"
        local, _, domain = addr.rpartition("@")
        if not local or "@" in local or not _DOMAIN.match(domain):
            problem = "is not of the form local@domain.tld"
        elif not addr.isascii():
            problem = "is not ASCII (SMTPUTF8 addresses are not supported)"
        elif any(c <= " " or c == "\x7f" for c in addr) or addr not in value:
            problem = "contains a space, comment or control character"
        elif len(addr) > MAX_ADDRESS:
            problem = f"is {len(addr):,} characters long (at most {MAX_ADDRESS}, RFC 5321)"
        else:
            found.append((display, addr))
            continue
        raise _Refused("bad_recipient",
                       f"{where}: address {_show(addr)} in {_show(value)} {problem}")
    return found


def _key(value: str | None) -> str | None:
    """An idempotency key as given, or refused when it is longer than the store keeps."""
    if value is not None and len(value) > MAX_IDEMPOTENCY_KEY:
        raise _Refused("unparseable", f"the idempotency key is {len(value):,} characters long"
                                      f" (at most {MAX_IDEMPOTENCY_KEY})")
    return value


def _unique(addresses: list[str]) -> tuple[str, ...]:
    first: dict[str, str] = {}
    for addr in addresses:
        first.setdefault(addr.lower(), addr)
    return tuple(first.values())


def _build(pairs: dict[str, list[tuple[str, str]]], subject: str, headers: dict[str, str],
           text: str | None, html: str | None,
           attachments: list[tuple[str, str, bytes]]) -> bytes:
    # Here: only a JSON submission is built. email.policy's header registry costs ~25-30
    # ms to import, which a pickup of .eml files (and drop_eml) need not pay.
    from email import policy
    from email.headerregistry import Address
    from email.message import EmailMessage

    msg = EmailMessage(policy=policy.SMTP)
    # Headers are built from the checked pairs, so they name exactly the envelope's addresses.
    for hname, key in (("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to")):
        if pairs[key]:
            msg[hname] = [Address(display, addr_spec=addr) for display, addr in pairs[key]]
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name] = value
    if text is not None:
        msg.set_content(text)
    if html is not None:  # beside the text as multipart/alternative, or alone
        (msg.set_content if text is None else msg.add_alternative)(html, subtype="html")
    if text is None and html is None and not attachments:
        msg.set_content("")
    for filename, ctype, content in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def _parse_eml(data: bytes) -> Submission:
    if not data or data.startswith((b"\n", b"\r\n")):
        raise _Refused("unparseable", "no header block: the message starts with an empty line")
    end = re.search(rb"\n(\r?\n)", data)
    head, rest = (data[:end.start() + 1], data[end.start() + 1:]) if end else (data, b"")
    lines = _LINE.findall(head)
    # The common case checked once for the whole block: no bare CR, all UTF-8. Otherwise
    # each line is checked, so that the refusal names the first bad one.
    try:
        texts = (head.decode("utf-8").split("\n")
                 if b"\r" not in head.replace(b"\r\n", b"") else None)
    except UnicodeDecodeError:
        texts = None
    fields: list[list[str]] = []     # [lower-case name, unfolded value]
    kept: list[bytes] = []
    dropping = False
    for number, line in enumerate(lines, 1):
        if texts is not None:
            text = texts[number - 1]
            if text.endswith("\r"):
                text = text[:-1]
        else:
            text = _checked_line(number, line)
        if line.startswith((b" ", b"\t")) and fields:
            fields[-1][1] += text
        else:
            start = _HEADER_START.match(text)
            if not start:
                if number == 1:
                    raise _Refused("unparseable", "no header block: line 1 is not a header: "
                                                  f"{_show(text)}")
                raise _Refused("header_injection", f"header line {number} is neither a "
                                                   f"'Name: value' line nor a continuation: "
                                                   f"{_show(text)}")
            fname = start.group(1).lower()
            fields.append([fname, text[start.end():]])
            dropping = fname == "bcc" or fname.startswith("x-mailsync-")
        if not dropping:
            kept.append(line)

    named: dict[str, list[str]] = {}
    for fname, value in fields:
        named.setdefault(fname, []).append(value)

    def single(fname: str) -> str | None:
        values = {v.strip() for v in named.get(fname, ())}
        if len(values) > 1:
            raise _Refused("unparseable", f"{len(values)} different {fname} headers")
        return values.pop() if values else None

    user = single("x-mailsync-user")
    if not user:
        raise _Refused("unparseable", "no X-Mailsync-User header, or an empty one "
                                      "(it names the sending user)")
    for fname, value in fields:
        _check_header_value(f"header {fname}", value)
    recipients: list[str] = []
    for fname in ("to", "cc", "bcc"):
        for value in named.get(fname, ()):
            recipients += [addr for _, addr in _addresses(value, fname.capitalize())]
    if not recipients:
        raise _Refused("no_recipients", "no address in To, Cc or Bcc")
    subjects = named.get("subject")
    return Submission(user, single("x-mailsync-account") or None, _unique(recipients),
                      b"".join(kept) + rest, _decode(subjects[0].strip()) if subjects else "",
                      _key(single("x-mailsync-idempotency-key") or None))


def _checked_line(number: int, line: bytes) -> str:
    """Header line ``number`` without its line ending, as text; refused when it holds a
    bare CR or is not UTF-8."""
    content = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
    if b"\r" in content:
        raise _Refused("header_injection", f"header line {number} has a bare CR: {_show(content)}")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("unparseable",
                       f"header line {number} is not UTF-8: {_show(content)}") from None


def _decode(value: str) -> str:
    """An RFC 2047 header value as text; the raw value when its encoding is broken."""
    if "=?" not in value:  # no encoded word: decode_header would return it as it is
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # HeaderParseError, LookupError, UnicodeError and friends
        return value
