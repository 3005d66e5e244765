"""DKIM private keys: read and check one (RSA of 2048 bits or more, or Ed25519), make
one, and the DNS TXT record of its public key.

Shared by ``mailsync validate`` (the key files' checks), ``mailsync dkim keygen`` and
the signer (mailsync/outbound/dkim.py). Errors name the file and what is wrong with it,
never its contents; :class:`PrivateKey`'s repr shows the algorithm only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from mailsync.config.secrets import Secret
from mailsync.errors import MailsyncError, SecretError
from mailsync.values import field, valueclass

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
MIN_RSA_BITS = 2048


class KeyError_(MailsyncError):  # noqa: N801 - KeyError is the builtin
    """A DKIM key that cannot be read or used."""


@valueclass
class PrivateKey:
    """A usable key: ``signing`` is what dkimpy signs with (PKCS#1 PEM for RSA, the
    base64 seed for Ed25519), ``public`` the base64 of the DNS record's ``p=``."""

    algorithm: Algorithm
    signing: bytes = field(repr=False)
    public: str
    bits: int

    @property
    def k(self) -> str:
        """The DNS record's ``k=`` tag."""
        return "rsa" if self.algorithm == "rsa-sha256" else "ed25519"


def _parse(data: bytes, what: str) -> PrivateKey:
    """A private key from a PEM file (PKCS#1 or PKCS#8, unencrypted), or from the base64
    Ed25519 seed that dkimpy's ``dknewkey`` writes."""
    # cryptography (OpenSSL) only here: validate imports it only for a config with dkim.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    text = data.strip()
    if not text.startswith(b"-----BEGIN"):
        try:
            seed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) != 32:
            raise KeyError_(f"{what} is not a PEM private key (nor a base64 Ed25519 seed)")
        key: object = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        try:
            key = ser.load_pem_private_key(text, password=None)
        except TypeError:
            raise KeyError_(f"{what} is encrypted: the daemon needs it unencrypted (its "
                            "file mode protects it)") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyError_(f"{what} is not a readable PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyError_(f"{what} is an RSA key of {key.key_size} bits: DKIM keys need "
                            f"at least {MIN_RSA_BITS} (RFC 8301); make one with `mailsync "
                            "dkim keygen`")
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL,
                                ser.NoEncryption())
        public = key.public_key().public_bytes(ser.Encoding.DER,
                                               ser.PublicFormat.SubjectPublicKeyInfo)
        return PrivateKey("rsa-sha256", pem, base64.b64encode(public).decode(), key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        return PrivateKey("ed25519-sha256", base64.b64encode(seed),
                          base64.b64encode(public).decode(), 256)
    raise KeyError_(f"{what} is a {type(key).__name__.lstrip('_')}, not an RSA or Ed25519 "
                    "key (the two DKIM allows)")


def read_key(ref: Secret) -> PrivateKey:
    """The key ``ref`` names; :class:`KeyError_` naming the reference when it is missing,
    unreadable or not a usable DKIM key."""
    what = f"DKIM key {ref.describe()}"
    try:
        text = ref.resolve()
    except SecretError as exc:
        raise KeyError_(f"DKIM key: {exc}") from None
    return _parse(text.encode("utf-8", "replace"), what)


def generate(kind: Literal["rsa", "ed25519"], bits: int = MIN_RSA_BITS) -> tuple[bytes,
                                                                                PrivateKey]:
    """A new key: its PKCS#8 PEM text, and the key as :func:`read_key` gives it."""
    # cryptography (OpenSSL) only here: its key generation.
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return pem, _parse(pem, "the new key")


def txt_value(key: PrivateKey) -> str:
    """The TXT record's value: ``v=DKIM1; k=rsa; p=...``."""
    return f"v=DKIM1; k={key.k}; p={key.public}"


def txt_record(domain: str, selector: str, key: PrivateKey) -> str:
    """The record as a zone file line, the value cut into strings of at most 255
    characters (one TXT string's limit; resolvers join them)."""
    value = txt_value(key)
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"
