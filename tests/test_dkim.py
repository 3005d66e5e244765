"""DKIM signing end to end: `mailsync dkim keygen` makes the key and the TXT record,
`run --once` signs what it sends to aiosmtpd, and dkimpy verifies it against that record
(DNS answered by a stub); a header changed in transit fails; validate checks the keys."""

from __future__ import annotations

import json
import re
import stat
import time
from email import message_from_bytes
from pathlib import Path

import dkim
import pytest

from mailsync.config.dkimkeys import read_key
from mailsync.config.secrets import Secret
from mailsync.daemon.spooling import RESCAN
from mailsync.outbound.dkim import DkimError, Signer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.pickup import IngestionCrashed
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import drop, ensure_dirs
from mailsync.store import Store
from mailsync.telemetry.metrics import Metrics
from tests.daemon_helpers import (
    daemon_config,
    daemons_fixture,  # noqa: F401 - the daemons fixture
    wait_until,
)
from tests.outbound_helpers import (
    history,
    load,
    run,
    run_once,
    server_yaml,
    write_config,
)

ACCOUNTS = DKIM_ACCOUNTS = (
    "  - name: sales\n    sender_name: Sales Team\n    email: sales@example.com\n"
    "    server: main\n    granted_to: [alice]\n"
    "  - name: other\n    email: info@other.org\n    server: main\n    granted_to: [alice]\n")


def keygen(tmp_path: Path, domain: str, selector: str, kind: str = "rsa") -> tuple[Path, str]:
    """The key file `mailsync dkim keygen` wrote and the TXT value it printed."""
    out = tmp_path / f"{selector}.key"
    result = run(["dkim", "keygen", domain, "--selector", selector, "--type", kind,
                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if " IN TXT " in x)
    assert line.startswith(f"{selector}._domainkey.{domain}. IN TXT")
    value = "".join(re.findall(r'"([^"]*)"', line))
    return out, value


def entry(domain: str, selector: str, key: Path, extra: str = "") -> str:
    """One line of the dkim list."""
    return f"  - {{domain: {domain}, selector: {selector}, private_key: {{file: {key}}}{extra}}}\n"


def stub_dns(records: dict[str, str]):
    """A dnsfunc for dkimpy: the TXT records by name, nothing else (no network)."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return None if value is None else value.encode()
    return dnsfunc


def dkim_config(tmp_path: Path, port: int, entries: str) -> Path:
    cfg = write_config(tmp_path, server_yaml("main", port), accounts=ACCOUNTS)
    cfg.write_text(cfg.read_text() + "dkim:\n" + entries)
    return cfg


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_sent_mail_verifies_against_the_generated_record(tmp_path, smtp_server, kind):
    srv = smtp_server()
    key, txt = keygen(tmp_path, "example.com", "s1", kind)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = dkim_config(tmp_path, srv.port,
                      entry("example.com", "s1", key))
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="Quote 42", text="Hello Ann\n-- \nSales")
    drop(tmp_path / "spool", user="alice", account="other", to=["bob@example.org"],
         subject="Unsigned", text="no key for other.org")
    run_once(cfg)
    got = {message_from_bytes(m.data)["Subject"]: m.data for m in srv.wait_for(2)}
    dns = stub_dns({"s1._domainkey.example.com": txt})

    signed = got["Quote 42"]
    sig = message_from_bytes(signed)["DKIM-Signature"]
    assert sig is not None and "d=example.com" in sig and "s=s1" in sig
    assert f"a={kind}-sha256" in sig.replace(" ", "").replace("\r\n", "")
    assert dkim.verify(signed, dnsfunc=dns)
    # Changed in transit: the Subject, or the body.
    assert not dkim.verify(signed.replace(b"Subject: Quote 42", b"Subject: Quote 43"),
                           dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Hello Ann", b"Hello Bob"), dnsfunc=dns)
    # Another key under the same name does not verify it either.
    _, other_txt = keygen(tmp_path, "example.com", "s9", kind)
    assert not dkim.verify(signed, dnsfunc=stub_dns({"s1._domainkey.example.com": other_txt}))
    # A From domain without a key is sent unsigned.
    assert b"DKIM-Signature" not in got["Unsigned"]
    # The stored content, which history shows, is what was sent, signature included.
    mid = next(r["id"] for r in history(cfg) if r["subject"] == "Quote 42")
    raw = run(["history", "show", str(mid), "--raw", "-c", str(cfg)]).stdout_bytes
    assert raw.replace(b"\r\n", b"\n") == signed.replace(b"\r\n", b"\n")


def test_two_keys_sign_twice_and_a_published_only_selector_signs_nothing(tmp_path,
                                                                         smtp_server):
    srv = smtp_server()
    rsa_key, rsa_txt = keygen(tmp_path, "example.com", "r1", "rsa")
    ed_key, ed_txt = keygen(tmp_path, "example.com", "e1", "ed25519")
    next_key, next_txt = keygen(tmp_path, "example.com", "r2", "rsa")
    cfg = dkim_config(tmp_path, srv.port,
                      entry("example.com", "r1", rsa_key) +
                      entry("example.com", "e1", ed_key) +
                      entry("example.com", "r2", next_key, ", sign: false"))
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="Twice", text="Hello")
    run_once(cfg)
    (got,) = srv.wait_for(1)
    sigs = message_from_bytes(got.data).get_all("DKIM-Signature")
    assert len(sigs) == 2
    assert {re.search(r"s=(\w+)", s).group(1) for s in sigs} == {"r1", "e1"}
    dns = stub_dns({"r1._domainkey.example.com": rsa_txt, "e1._domainkey.example.com": ed_txt,
                    "r2._domainkey.example.com": next_txt})
    d = dkim.DKIM(got.data)
    assert d.verify(idx=0, dnsfunc=dns) and d.verify(idx=1, dnsfunc=dns)


def test_a_subdomain_is_signed_with_its_parent_domains_key(tmp_path):
    key, _ = keygen(tmp_path, "example.com", "s1")
    signer = Signer.load(load_model(tmp_path, key).dkim)
    assert [k.selector for k in signer.keys_for("a@mail.example.com")] == [b"s1"]
    assert signer.keys_for("a@example.org") == ()
    assert signer.keys_for("a@notexample.com") == ()


def load_model(tmp_path: Path, key: Path, extra: str = ""):
    cfg = write_config(tmp_path, server_yaml("main", 2525), accounts=ACCOUNTS)
    cfg.write_text(cfg.read_text() + "dkim:\n  - {domain: example.com, selector: s1, "
                   f"private_key: {{file: {key}}}{extra}}}\n")
    return load(cfg)


def test_keygen_never_overwrites_and_checks_its_arguments(tmp_path):
    key, _ = keygen(tmp_path, "example.com", "s1")
    before = key.read_bytes()
    result = run(["dkim", "keygen", "example.com", "--selector", "s1", "-o", str(key)])
    assert result.exit_code == 1
    assert f"{key} exists: not overwritten" in result.output
    assert key.read_bytes() == before
    result = run(["dkim", "keygen", "exa mple.com", "--selector", "s1", "-o",
                  str(tmp_path / "x.key")])
    assert result.exit_code == 2 and "domain 'exa mple.com' is not a DNS name" in result.output
    assert not (tmp_path / "x.key").exists()


def validate(tmp_path: Path, entries: str) -> list[dict[str, object]]:
    cfg = write_config(tmp_path, server_yaml("main", 2525), accounts=ACCOUNTS)
    cfg.write_text(cfg.read_text() + "dkim:\n" + entries)
    result = run(["validate", "-c", str(cfg), "--format", "json"])
    problems: list[dict[str, object]] = json.loads(result.output)
    return problems


def test_validate_checks_the_key_files_and_the_domains(tmp_path):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = tmp_path / "weak.pem"
    weak.write_bytes(small.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                         ser.NoEncryption()))
    weak.chmod(0o600)
    curve = tmp_path / "ec.pem"
    curve.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    curve.chmod(0o600)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    good, _ = keygen(tmp_path, "example.net", "s1")
    good.chmod(0o644)
    problems = validate(tmp_path,
                        entry("example.com", "a", weak) +
                        entry("example.com", "b", curve) +
                        entry("example.com", "c", garbage) +
                        entry("example.com", "c", good) +
                        entry("example.net", "s1", good) +
                        "  - {domain: example.com, selector: d, private_key: "
                        f"{{file: {tmp_path / 'absent.pem'}}}}}\n"
                        "  - {domain: example.com, selector: e, private_key: PLAINKEY}\n")
    text = "\n".join(f"{p['severity']}: {p['path']}: {p['message']}" for p in problems)
    assert "error: dkim[0].private_key: " in text and "RSA key of 1024 bits" in text
    assert "error: dkim[1].private_key: " in text and "not an RSA or Ed25519 key" in text
    assert "error: dkim[2].private_key: " in text and "is not a readable PEM private key" in text
    assert "error: dkim[3].selector: DKIM selector 'c' of example.com is declared twice" in text
    assert "warning: dkim[4].domain: DKIM domain example.net is not one the accounts send as" \
        in text
    assert "warning: dkim[4].private_key: " in text and "may be read by others (mode 0644)" \
        in text
    assert "dkim[5]" not in text  # absent here (CI): not reported, as for secret files
    assert "error: dkim[6].private_key: a DKIM private key cannot be written in the config" \
        in text
    assert "PLAINKEY" not in text and "bm90IGEga2V5" not in text


def test_the_key_never_shows(tmp_path):
    key, _ = keygen(tmp_path, "example.com", "s1")
    pem = key.read_text()
    body = "".join(pem.splitlines()[1:-1])
    parsed = read_key(Secret("file", str(key)))
    signer = Signer.load(load_model(tmp_path, key).dkim)
    for shown in (repr(parsed), str(parsed), repr(signer), repr(signer.keys_for("a@example.com")),
                  repr(load_model(tmp_path, key))):
        assert body[:40] not in shown and parsed.signing.decode()[40:80] not in shown
    plan = run(["plan", "-c", str(tmp_path / "config.yaml"), "--format", "json"])
    assert body[:40] not in plan.output


def test_a_key_that_cannot_be_read_leaves_the_spool_waiting(tmp_path, smtp_server):
    srv = smtp_server()
    key, _ = keygen(tmp_path, "example.com", "s1")
    cfg = dkim_config(tmp_path, srv.port,
                      entry("example.com", "s1", key))
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="Wait", text="Hello")
    key.write_text("not a key any more\n")
    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 1
    assert "error: dkim[0].private_key: " in result.output
    assert "is not a PEM private key" in result.output
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1  # waits: never unsigned
    assert srv.messages == []
    # A key broken after the configuration was loaded fails the pickup's pass alike.
    key.unlink()
    good, _ = keygen(tmp_path, "example.com", "s1")  # s1.key again
    config = load(cfg)
    good.write_text("-----BEGIN PRIVATE KEY-----\nbm90\n-----END PRIVATE KEY-----\n")
    store = Store.open(config.daemon.state_dir)
    outbound = OutboundStore(store)
    try:
        ingester = Ingester(config, outbound, Metrics(served=False))
        with pytest.raises(DkimError, match="dkim s1._domainkey.example.com: DKIM key"):
            ingester.run_once()
        assert outbound.counts()["queued"] == 0
    finally:
        store.close()
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1


def test_a_missing_key_file_fails_run_once_in_a_sentence_and_the_file_waits(tmp_path,
                                                                           smtp_server):
    """A key file absent when the configuration loads (validate does not require secret
    files, which CI does not have) fails the spool's pass: `run --once` says why in one
    line, exits 1, and the file waits for the key; nothing leaves unsigned."""
    srv = smtp_server()
    key = tmp_path / "s1.key"
    cfg = dkim_config(tmp_path, srv.port, entry("example.com", "s1", key))
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="Wait", text="Hello")
    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: the spool was not taken: dkim s1._domainkey.example.com: DKIM key: secret "
        f"file {key} does not exist; its files wait in {tmp_path / 'spool' / 'new'}")
    assert result.stdout.startswith("spool: 0 queued")
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1
    assert srv.messages == []
    keygen(tmp_path, "example.com", "s1")  # the key arrives: the next run sends it, signed
    assert "1 sent" in run_once(cfg).output
    [sent] = srv.wait_for(1)
    assert sent.data.startswith(b"DKIM-Signature: ")


def test_a_bug_in_the_spool_pass_still_ends_run_once_with_its_traceback(tmp_path, smtp_server,
                                                                       monkeypatch):
    """Only mailsync's own errors become a sentence: a bug (here one injected into the
    ingester, which the forked child inherits) surfaces as itself, for the report."""
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port), accounts=ACCOUNTS)
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="Wait", text="Hello")

    def broken(self, limit=None):
        raise RuntimeError("an injected bug")

    monkeypatch.setattr(Ingester, "run_once", broken)
    with pytest.raises(IngestionCrashed) as crashed:
        run(["run", "--once", "-c", str(cfg)])
    assert "Traceback (most recent call last)" in str(crashed.value)
    assert "RuntimeError: an injected bug" in str(crashed.value)
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1


def test_the_daemon_logs_a_failing_spool_once_and_says_when_it_is_taken_again(tmp_path,
                                                                              smtp_server,
                                                                              daemons):
    srv = smtp_server()
    key = tmp_path / "s1.key"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(daemon_config(tmp_path, server_yaml("main", srv.port), accounts=ACCOUNTS)
                   + "dkim:\n" + entry("example.com", "s1", key))
    ensure_dirs(tmp_path / "spool")
    drop(tmp_path / "spool", user="alice", account="sales", to=["ann@example.org"],
         subject="first", text="Hello")
    daemon = daemons(cfg)
    failing = "taking the spool fails: dkim s1._domainkey.example.com: DKIM key: secret file"
    wait_until(lambda: failing in daemon.log, 20, "the failing pass logged")
    assert daemon.metric("mailsync_spool_intake_failing") == 1
    # Another file wakes the pickup, and a rescan follows: the same failure, not logged
    # again (at debug level only).
    drop(tmp_path / "spool", user="alice", account="sales", to=["bob@example.org"],
         subject="second", text="Hello")
    time.sleep(RESCAN + 1)
    assert srv.messages == []
    keygen(tmp_path, "example.com", "s1")
    drop(tmp_path / "spool", user="alice", account="sales", to=["cy@example.org"],
         subject="third", text="Hello")  # wakes the pickup at once
    srv.wait_for(3, timeout=20)
    log = daemon.log
    assert log.count(failing) == 1
    assert "Traceback" not in log
    assert "the spool is taken again (it failed: dkim s1._domainkey.example.com" in log
    assert daemon.metric("mailsync_spool_intake_failing") == 0
    assert daemon.stop() == 0
    assert sorted(r["status"] for r in history(cfg)) == ["sent"] * 3


def test_rsa_is_signed_by_openssl_and_by_dkimpy_when_they_disagree(tmp_path, monkeypatch,
                                                                    caplog):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, txt = keygen(tmp_path, "example.com", "s1")
    dns = stub_dns({"s1._domainkey.example.com": txt})
    message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    fast = Signer.load(load_model(tmp_path, key).dkim)
    assert fast.keys_for("a@example.com")[0].openssl is not None
    assert dkim.verify(fast.sign(message, "a@example.com"), dnsfunc=dns)
    # An OpenSSL path that signs wrongly (here: with another key) is noticed at load.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    real = serialization.load_pem_private_key

    def load_wrongly(data, *args, **kwargs):  # only the signer's copy (PKCS#1) is wrong
        return other if data.startswith(b"-----BEGIN RSA") else real(data, *args, **kwargs)
    monkeypatch.setattr(serialization, "load_pem_private_key", load_wrongly)
    slow = Signer.load(load_model(tmp_path, key).dkim)
    assert slow.keys_for("a@example.com")[0].openssl is None
    assert "signing with dkimpy's own (slower) RSA" in caplog.text
    assert dkim.verify(slow.sign(message, "a@example.com"), dnsfunc=dns)


def test_plan_shows_a_rotation_step(tmp_path):
    old, _ = keygen(tmp_path, "example.com", "s1")
    new, _ = keygen(tmp_path, "example.com", "s2")
    before = write_config(tmp_path, server_yaml("main", 2525), accounts=ACCOUNTS)
    base = before.read_text()
    before.write_text(base + "dkim:\n" + entry("example.com", "s1", old) +
                      entry("example.com", "s2", new, ", sign: false"))
    after = tmp_path / "after.yaml"
    after.write_text(base + "dkim:\n" + entry("example.com", "s1", old, ", sign: false") +
                     entry("example.com", "s2", new))
    result = run(["plan", "-c", str(after), "--against", str(before)])
    assert "~ dkim.s1._domainkey.example.com\n    sign: true -> false" in result.output
    assert "~ dkim.s2._domainkey.example.com\n    sign: false -> true" in result.output
    assert "Plan: 0 to add, 2 to change, 0 to remove." in result.output
