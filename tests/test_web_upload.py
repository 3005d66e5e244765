"""The Activities page's upload form: an operator marks an ``upload_document`` activity
done with its document, over real HTTP to the console on a real store.

The document is kept as ``mailsync activity done --attach`` keeps it (0640, in
``state_dir/attachments/ID/NAME``, whatever the umask); a name with a path in it, an
oversized body, a missing CSRF token and a viewer are refused, the activity left open.
"""

from __future__ import annotations

import http.client
import os
import stat
import uuid
from collections.abc import Iterator

import pytest

from mailsync.web.activities import UPLOAD_LIMIT
from tests.web_helpers import Client, Reply, Site, make_site

# A document with every byte value and a line that looks like a boundary.
DOCUMENT = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n%PDF-1.4\r\n"


@pytest.fixture
def site(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server, inbox=True)


def _multipart(fields: dict[str, str], filename: str | None, data: bytes
               ) -> tuple[str, bytes]:
    boundary = "----mailsync" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    if filename is not None:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"document\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/pdf\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def _upload(c: Client, fields: dict[str, str], filename: str | None, data: bytes) -> Reply:
    kind, body = _multipart(fields, filename, data)
    conn = http.client.HTTPConnection(c.host, c.port, timeout=30)
    headers = {"Content-Type": kind, "Cookie": "; ".join(f"{k}={v}" for k, v in c.jar.items())}
    try:
        conn.request("POST", "/activities/upload", body, headers)
        r = conn.getresponse()
        reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, [], r.read())
    finally:
        conn.close()
    return reply


def _state(site: Site, aid: int) -> tuple[str, str | None]:
    row = site.store.conn.execute("SELECT state, attachment FROM activities WHERE id = ?",
                                  (aid,)).fetchone()
    return row[0], row[1]


def test_an_operator_uploads_the_document_and_the_activity_is_done(site):
    c = site.client()
    c.login("olga")
    contract = site.activities["contract"]
    page = c.get("/activities")
    assert 'action="/activities/upload" enctype="multipart/form-data"' in page.text
    assert f'id="upload-{contract}"' in page.text
    old = os.umask(0)  # the kept file is 0640 whatever the umask
    try:
        r = _upload(c, {"csrf": page.csrf(), "id": str(contract), "feedback": "signed"},
                    "contract Q-1042.pdf", DOCUMENT)
    finally:
        os.umask(old)
    assert r.status == 200, r.text
    assert f"Activity {contract} done: Contract" in r.text
    state_dir = site.config.daemon.state_dir
    kept = state_dir / "attachments" / str(contract) / "contract Q-1042.pdf"
    assert kept.read_bytes() == DOCUMENT
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert _state(site, contract) == ("done", f"attachments/{contract}/contract Q-1042.pdf")
    assert not [p for p in state_dir.iterdir() if p.name.startswith(".upload-")]
    again = _upload(c, {"csrf": page.csrf(), "id": str(contract)}, "other.pdf", b"x")
    assert again.status == 409 and f"activity {contract} is done" in again.text


@pytest.mark.parametrize("name", ["../../evil.pdf", "/etc/passwd", "..\\evil.pdf", ".hidden",
                                  "a" * 201 + ".pdf", "bad\x07name.pdf", ""])
def test_a_name_with_a_path_in_it_is_refused(site, name):
    c = site.client()
    c.login("olga")
    contract = site.activities["contract"]
    token = c.get("/activities").csrf()
    r = _upload(c, {"csrf": token, "id": str(contract)}, name, DOCUMENT)
    assert r.status == 400, r.text
    assert f"activity {contract}: document" in r.text and "refused" in r.text
    assert _state(site, contract) == ("open", None)
    root = site.config_path.parent
    assert not (root / "evil.pdf").exists() and not (root / "state" / "evil.pdf").exists()
    assert not (site.config.daemon.state_dir / "attachments").exists()


def test_an_oversized_document_is_refused(site):
    c = site.client()
    c.login("olga")
    contract = site.activities["contract"]
    token = c.get("/activities").csrf()
    r = _upload(c, {"csrf": token, "id": str(contract)}, "big.pdf", b"x" * (UPLOAD_LIMIT + 1))
    assert r.status == 413, r.text
    assert f"is {UPLOAD_LIMIT + 1} bytes (at most {UPLOAD_LIMIT})" in r.text
    huge = _upload(c, {"csrf": token, "id": str(contract)}, "huge.pdf",
                   b"x" * (UPLOAD_LIMIT + 128 * 1024))
    assert huge.status == 413 and "at most" in huge.text
    assert _state(site, contract) == ("open", None)


def test_no_csrf_token_or_a_viewer_is_refused(site):
    contract = site.activities["contract"]
    c = site.client()
    c.login("olga")
    r = _upload(c, {"id": str(contract)}, "contract.pdf", DOCUMENT)
    assert r.status == 403 and "CSRF token is missing or wrong" in r.text
    v = site.client()
    v.login("victor")
    token = v.get("/activities").csrf()
    r = _upload(v, {"csrf": token, "id": str(contract)}, "contract.pdf", DOCUMENT)
    assert r.status == 403 and "needs the operator role" in r.text
    assert _state(site, contract) == ("open", None)
    assert not (site.config.daemon.state_dir / "attachments").exists()


def test_a_body_that_does_not_parse_is_refused(site):
    c = site.client()
    c.login("olga")
    contract = site.activities["contract"]
    kind, body = _multipart({"csrf": c.get("/activities").csrf(), "id": str(contract)},
                            "contract.pdf", DOCUMENT)
    conn = http.client.HTTPConnection(c.host, c.port, timeout=30)
    conn.request("POST", "/activities/upload", body, {  # another boundary than the body's
        "Content-Type": kind[:-4] + "zzzz",
        "Cookie": "; ".join(f"{k}={v}" for k, v in c.jar.items())})
    r = conn.getresponse()
    assert r.status == 400 and b"does not parse" in r.read()
    conn.close()
    assert _state(site, contract) == ("open", None)
