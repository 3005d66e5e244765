"""Google service accounts for the test OAuth2 server: keys and RS256 JWT assertions.

:class:`ServiceAccount` makes an RSA key and the JSON key file Google hands out;
:func:`verify_assertion` checks a JWT bearer assertion (RFC 7523) the way Google's token
endpoint does: RS256 signature by a known key (``kid`` = ``private_key_id``), ``iss`` =
``client_email``, ``aud`` = the token URL, ``iat``/``exp`` around now and at most an hour
apart, ``scope`` within what the account may ask. ``sub`` (the user impersonated through
domain-wide delegation) is returned for the caller to use. Verification is written here
with ``cryptography`` rather than a JWT library, so the client's own JWT code (authlib)
is checked against an independent implementation. :func:`sign_assertion` makes one, for
tests of the server itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SKEW = 60.0  # seconds of clock difference tolerated, as Google does


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    key_id: str
    private_key: rsa.RSAPrivateKey
    scopes: frozenset[str] | None

    @classmethod
    def generate(cls, client_email: str, scopes: list[str] | None = None) -> ServiceAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(client_email, os.urandom(20).hex(), key,
                   frozenset(scopes) if scopes is not None else None)

    def private_key_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()

    def json_key(self, token_url: str) -> dict[str, str]:
        """The JSON key file, as Google's console downloads it."""
        return {"type": "service_account", "project_id": "test-project",
                "private_key_id": self.key_id, "private_key": self.private_key_pem(),
                "client_email": self.client_email, "client_id": "1" + "0" * 20,
                "auth_uri": token_url.rsplit("/", 1)[0] + "/auth", "token_uri": token_url,
                "auth_provider_x509_cert_url": token_url.rsplit("/", 1)[0] + "/certs",
                "universe_domain": "googleapis.com"}


class OAuth2Error(Exception):
    """An RFC 6749 error answer: ``error`` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_assertion(key: dict[str, str], claims: dict[str, Any], *,
                   alg: str = "RS256") -> str:
    """An RS256 JWT over ``claims`` signed with a JSON key (for tests of the server)."""
    private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    header = {"alg": alg, "typ": "JWT", "kid": key["private_key_id"]}
    signing_input = ".".join(_b64url(json.dumps(x).encode()) for x in (header, claims))
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


def verify_assertion(assertion: str, accounts: dict[str, ServiceAccount],
                     audience: str) -> dict[str, Any]:
    """The claims of a valid assertion; raises OAuth2Error(invalid_grant...) otherwise."""
    def refuse(why: str) -> OAuth2Error:
        return OAuth2Error("invalid_grant", why)

    try:
        head_b64, claims_b64, signature_b64 = assertion.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(signature_b64)
    except (ValueError, binascii.Error) as e:
        raise refuse(f"not a JWT: {e}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise refuse("not a JWT: header and claims must be objects")
    if header.get("alg") != "RS256":
        raise refuse(f"alg must be RS256, not {header.get('alg')!r}")
    account = accounts.get(str(header.get("kid", "")))
    if account is None:
        candidates = [a for a in accounts.values() if a.client_email == claims.get("iss")]
        if len(candidates) != 1:
            raise refuse("Invalid JWT Signature.")  # Google's words for an unknown key
        account = candidates[0]
    try:
        account.private_key.public_key().verify(
            signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise refuse("Invalid JWT Signature.") from None
    if claims.get("iss") != account.client_email:
        raise refuse(f"iss must be {account.client_email}")
    if claims.get("aud") != audience:
        raise refuse(f"Invalid JWT: aud must be {audience}")
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise refuse("Invalid JWT: iat and exp are required numbers")
    if iat > now + SKEW or exp <= now - SKEW or exp - iat > 3600:
        raise refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                     "reasonable timeframe. Check your iat and exp values")
    asked = set(str(claims.get("scope", "")).split())
    if account.scopes is not None and not asked <= account.scopes:
        raise OAuth2Error("unauthorized_client", "Client is unauthorized to retrieve access "
                          "tokens using this method, or client not authorized for any of the "
                          "scopes requested.")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise refuse("Invalid JWT: sub must be a string")
    return claims
