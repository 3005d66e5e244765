"""DKIM signing of composed messages, per From domain, with dkimpy.

Messages are signed when they are queued, right after composing (in the pickup process,
beside the senders, not in their threads): the composed bytes are final, since sending
adds no header (VERP changes only the envelope sender, MAIL FROM), so the stored
content, which ``history show`` prints, is exactly what every attempt sends, signature
included. A message is signed with every ``dkim`` entry that has ``sign: true`` for its
From domain, or, when that domain has none, for its closest parent domain (relaxed
alignment is enough for DMARC); two entries of one domain (RSA and Ed25519) give two
signatures. Canonicalization relaxed/relaxed; the headers signed are dkimpy's default
(every header present but those RFC 6376 says not to sign, From signed once more so that
none can be added).

RSA's private-key operation is OpenSSL's (through cryptography), not dkimpy's pure-Python
one: 0.3 ms a message instead of 6 (bench/outbound.py --dkim rsa); dkimpy still
canonicalizes, hashes, builds and folds the header. :meth:`Signer.load` checks that path
once against dkimpy's own verifier and falls back to dkimpy's RSA when it disagrees (a
later dkimpy changing what this relies on).

The keys are read once per configuration (:meth:`Signer.load`); a key that cannot be
read fails the pass, so that nothing leaves unsigned meanwhile: the files wait in
``new/``. The key is never logged, and :class:`Signer`'s repr names the selectors only.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from mailsync.config.deliverability import DkimKey
from mailsync.config.dkimkeys import KeyError_, PrivateKey, read_key
from mailsync.errors import MailsyncError
from mailsync.values import valueclass

log = logging.getLogger("mailsync.dkim")


class DkimError(MailsyncError):
    """A DKIM key could not be loaded, or a message could not be signed."""


@valueclass
class _Signing:
    domain: bytes
    selector: bytes
    key: PrivateKey
    openssl: Any = None  # the RSA key as OpenSSL holds it (None: dkimpy's own RSA)

    def __repr__(self) -> str:
        return f"<{self.selector.decode()}._domainkey.{self.domain.decode()} " \
               f"{self.key.algorithm}>"


_FAST: Any = None  # the dkimpy subclass signing RSA with OpenSSL, made on first use


def _fast_class() -> Any:
    """dkimpy's DKIM with the RSA signature of its header made by OpenSSL; the rest (the
    header's fields, its folding, the headers hashed) is dkimpy 1.1's ``gen_header``."""
    global _FAST
    if _FAST is not None:
        return _FAST
    import dkim  # dkimpy, imported only where mail is signed (the pickup)
    from cryptography.hazmat.primitives import hashes  # OpenSSL's RSA, for the same reason
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    class Fast(dkim.DKIM):  # type: ignore[misc]
        openssl: Any = None

        def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Any,
                       canon_policy: Any, header_name: bytes, pk: Any,
                       standardize: bool = False) -> bytes:
            if self.openssl is None or standardize \
                    or self.signature_algorithm != b"rsa-sha256":
                return super().gen_header(  # type: ignore[no-any-return]
                    fields, include_headers, canon_policy, header_name, pk, standardize)
            value = b"; ".join(b"=".join(x) for x in fields)
            value = dkim.fold(value, namelen=len(header_name), linesep=b"\r\n")
            value = dkim.RE_BTAG.sub(b"\\1", value)
            h = dkim.HashThrough(self.hasher(), False)
            headers = canon_policy.canonicalize_headers(self.headers)
            self.signed_headers = dkim.hash_headers(
                h, canon_policy, headers, include_headers, (header_name, b" " + value),
                dict(fields))
            signature = self.openssl.sign(h.digest(), padding.PKCS1v15(),
                                          utils.Prehashed(hashes.SHA256()))
            at = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
            fields[at] = (b"b", base64.b64encode(signature))
            value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
            return dkim.fold(value, namelen=len(header_name),  # type: ignore[no-any-return]
                             linesep=self.linesep)

    _FAST = Fast
    return Fast


def _with_openssl(signing: _Signing) -> _Signing:
    """``signing`` with OpenSSL's RSA when a message it signs verifies with dkimpy against
    its public key; as it is (dkimpy's RSA) otherwise."""
    if signing.key.algorithm != "rsa-sha256":
        return signing
    import dkim  # dkimpy, imported only where mail is signed (the pickup)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    fast = _Signing(signing.domain, signing.selector, signing.key,
                    load_pem_private_key(signing.key.signing, password=None))
    probe = b"From: a@" + signing.domain + b"\r\nSubject: probe\r\n\r\nprobe\r\n"
    txt = f"v=DKIM1; k=rsa; p={signing.key.public}".encode()
    try:
        signed = _sign_one(fast, probe, log) + probe
        ok = dkim.verify(signed, dnsfunc=lambda name, timeout=5: txt)
    except Exception:  # noqa: BLE001 - any disagreement means: use dkimpy's own RSA
        ok = False
    if not ok:
        log.warning("DKIM: OpenSSL's RSA signatures do not verify with this dkimpy; "
                    "signing with dkimpy's own (slower) RSA")
        return signing
    return fast


def _sign_one(k: _Signing, message: bytes, logger: logging.Logger) -> bytes:
    """One DKIM-Signature header line of ``message`` with ``k``."""
    d = _fast_class()(message, logger=logger,
                      signature_algorithm=k.key.algorithm.encode("ascii"))
    d.openssl = k.openssl
    header: bytes = d.sign(k.selector, k.domain, k.key.signing,
                           canonicalize=(b"relaxed", b"relaxed"))
    return header


class Signer:
    """The signing keys of a configuration, by domain."""

    def __init__(self, keys: dict[str, tuple[_Signing, ...]]) -> None:
        self._keys = keys

    def __repr__(self) -> str:
        return f"Signer({sorted(self._keys)})"

    @classmethod
    def load(cls, entries: Sequence[DkimKey]) -> Signer:
        """The entries that sign, their keys read now; DkimError naming the entry when a
        key is unusable."""
        keys: dict[str, list[_Signing]] = {}
        for entry in entries:
            if not entry.sign:
                continue
            try:
                key = read_key(entry.private_key)
            except KeyError_ as exc:
                raise DkimError(f"dkim {entry.name}: {exc}") from None
            keys.setdefault(entry.domain, []).append(_with_openssl(
                _Signing(entry.domain.encode("ascii"), entry.selector.encode("ascii"), key)))
        return cls({d: tuple(k) for d, k in keys.items()})

    def __bool__(self) -> bool:
        return bool(self._keys)

    def keys_for(self, address: str) -> tuple[_Signing, ...]:
        """The keys that sign mail from ``address``: its domain's, else its closest parent
        domain's; empty when none."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        while domain:
            found = self._keys.get(domain)
            if found:
                return found
            _, _, domain = domain.partition(".")
        return ()

    def sign(self, message: bytes, from_address: str) -> bytes:
        """``message`` (CRLF line ends) with a DKIM-Signature header per key of its From
        domain in front; unchanged when no key applies."""
        keys = self.keys_for(from_address)
        if not keys:
            return message
        import dkim  # dkimpy, imported only where mail is signed (the pickup)

        headers = []
        for k in keys:
            try:
                headers.append(_sign_one(k, message, log))
            except dkim.DKIMException as exc:
                # A key dkimpy cannot parse is not described (its error may quote it).
                why = "the key is unusable" if isinstance(exc, dkim.KeyFormatError) \
                    else str(exc)
                raise DkimError(f"dkim {k!r}: cannot sign: {why}") from None
        # Each signature covers the message as composed, not the other signatures.
        return b"".join(headers) + message
