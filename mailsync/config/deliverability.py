"""DKIM signing keys (``dkim:``) and delivery webhooks (``webhooks:``): model and checks.

A ``dkim`` entry is a signing domain, its selector and a reference to the private key
file; ``sign: false`` publishes a selector without signing with it (key rotation,
docs/deliverability.md). A ``webhooks`` entry is an HTTPS endpoint told of the events
it lists, each request signed with its secret. Keys and secrets are references, read only
when used (key files: also by ``mailsync validate``, which checks them).
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from mailsync.config.admin import loopback
from mailsync.config.problems import Path, Severity
from mailsync.config.secrets import Secret
from mailsync.config.units import format_duration, parse_duration
from mailsync.values import valueclass

if TYPE_CHECKING:  # the whole configuration, whose tree holds these (config/tree.py)
    from mailsync.config.tree import Config

Finding = tuple[Severity, Path, str]
Event = Literal["sent", "deferred", "failed", "bounced", "suppressed"]
EVENTS: tuple[Event, ...] = ("sent", "deferred", "failed", "bounced", "suppressed")


@valueclass
class DkimKey:
    """One ``dkim`` entry: ``selector._domainkey.domain`` publishes the public key of
    ``private_key`` (a reference, never the key); ``sign`` false: published only."""

    domain: str
    selector: str
    private_key: Secret
    sign: bool = True

    @property
    def name(self) -> str:
        """The DNS name of the entry's TXT record (and its name in messages)."""
        return f"{self.selector}._domainkey.{self.domain}"


@valueclass
class WebhookRetry:
    """Backoff of a webhook's undelivered events: ``first`` after the first failure,
    doubling up to ``max``; an event not taken within ``lifetime`` of its making is
    dropped (counted and logged)."""

    first: timedelta = timedelta(seconds=5)
    max: timedelta = timedelta(minutes=10)
    lifetime: timedelta = timedelta(days=5)


@valueclass
class Webhook:
    """One ``webhooks`` entry: where events are posted, which, and the signing secret."""

    name: str
    url: str
    secret: Secret
    events: tuple[Event, ...] = EVENTS
    timeout: timedelta = timedelta(seconds=10)
    retry: WebhookRetry = WebhookRetry()
    allow_http: bool = False

    def wants(self, event: str) -> bool:
        return event in self.events


def default_name(url: str) -> str:
    """A webhook's name when none is given: the URL's host (and port), never its path or
    query, which may hold a token."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


def build_dkim(items: list[dict[str, Any]] | None,
               secret: Callable[[Any], Secret | None]) -> tuple[DkimKey, ...]:
    """The model of a schema-valid ``dkim`` list (relative key files already resolved by
    ``secret``)."""
    out = []
    for d in items or ():
        key = secret(d["private_key"])
        assert key is not None  # required by the schema
        out.append(DkimKey(d["domain"].lower().rstrip("."), d["selector"], key,
                           d.get("sign", True)))
    return tuple(out)


def build_webhooks(items: list[dict[str, Any]] | None,
                   secret: Callable[[Any], Secret | None]) -> tuple[Webhook, ...]:
    """The model of a schema-valid ``webhooks`` list."""
    out = []
    for d in items or ():
        key = secret(d["secret"])
        assert key is not None  # required by the schema
        retry = d.get("retry") or {}
        out.append(Webhook(
            name=d.get("name") or default_name(d["url"]),
            url=d["url"], secret=key,
            events=tuple(d.get("events", EVENTS)),
            timeout=parse_duration(d["timeout"]) if "timeout" in d
            else Webhook.timeout,
            retry=WebhookRetry(
                parse_duration(retry["first"]) if "first" in retry else WebhookRetry.first,
                parse_duration(retry["max"]) if "max" in retry else WebhookRetry.max,
                parse_duration(retry["lifetime"]) if "lifetime" in retry
                else WebhookRetry.lifetime),
            allow_http=d.get("allow_http", False)))
    return tuple(out)


def sending_domains(config: Config) -> set[str]:
    """The domains messages may be sent from: the accounts' addresses and the alias
    domain's ``default_from`` (the From of a rewritten message)."""
    domains = {a.email.rpartition("@")[2].lower() for a in config.accounts}
    alias = config.alias_domain
    if alias is not None and alias.default_from:
        domains.add(alias.domain.lower())
    return domains


def _key_findings(path: Path, key: DkimKey) -> Iterator[Finding]:
    """A key file that exists here must be readable and a usable key. One absent here is
    not reported, as for secret and CA files: validate may run in CI, without the keys
    (the daemon takes no mail from the spool until it can sign with it)."""
    from mailsync.config.dkimkeys import KeyError_, read_key  # cryptography, only here

    where = path + ("private_key",)
    ref = key.private_key
    if ref.kind == "plain":
        yield ("error", where, "a DKIM private key cannot be written in the config: use "
               "{file: PATH} (or {credential: NAME})")
        return
    if ref.kind != "file":
        return  # {env: ...} or {credential: ...}: only where the daemon runs
    try:
        st = os.stat(ref.ref)
    except FileNotFoundError:
        return
    except OSError:
        st = None
    if st is not None and stat.S_IMODE(st.st_mode) & 0o007:
        yield ("warning", where, f"DKIM key file {ref.ref} may be read by others (mode "
               f"{stat.S_IMODE(st.st_mode):04o}): make it 0600 or 0640")
    try:
        read_key(ref)
    except KeyError_ as exc:
        yield ("error", where, str(exc))


def check(config: Config, data: dict[str, Any]) -> Iterator[Finding]:
    """DKIM: duplicate selectors, unusable keys, domains no account sends as, a domain
    with no entry that signs. Webhooks: duplicate names, plain HTTP to another host, a
    secret written in the file, a backoff whose first step is longer than its max."""
    seen: dict[tuple[str, str], int] = {}
    domains = sending_domains(config)
    signing: set[str] = set()
    for i, key in enumerate(config.dkim):
        path: Path = ("dkim", i)
        if (key.domain, key.selector) in seen:
            yield ("error", path + ("selector",),
                   f"DKIM selector {key.selector!r} of {key.domain} is declared twice "
                   f"(also dkim[{seen[key.domain, key.selector]}])")
        seen[key.domain, key.selector] = i
        if key.sign:
            signing.add(key.domain)
        if not any(d == key.domain or d.endswith("." + key.domain) for d in domains):
            yield ("warning", path + ("domain",),
                   f"DKIM domain {key.domain} is not one the accounts send as (they send "
                   f"as {', '.join(sorted(domains)) or 'nothing'}): it signs no message")
        yield from _key_findings(path, key)
    for domain in sorted({k.domain for k in config.dkim} - signing):
        i = next(n for n, k in enumerate(config.dkim) if k.domain == domain)
        yield ("warning", ("dkim", i, "sign"),
               f"no dkim entry of {domain} has sign: true: its mail goes out unsigned")

    names: dict[str, int] = {}
    for i, hook in enumerate(config.webhooks):
        path = ("webhooks", i)
        if hook.name in names:
            yield ("error", path + ("name",),
                   f"duplicate webhook name {hook.name!r} (also webhooks[{names[hook.name]}])"
                   "; give each webhook a name of its own")
        names[hook.name] = i
        parts = urllib.parse.urlsplit(hook.url)
        if parts.scheme == "http" and not hook.allow_http \
                and not loopback(parts.hostname or ""):
            yield ("error", path + ("url",),
                   f"webhook {hook.name}: plain http to {parts.hostname}, not a loopback "
                   "address: events and their signatures would cross the network in "
                   "clear; use https, or allow_http: true")
        if parts.username or parts.password:
            yield ("error", path + ("url",),
                   f"webhook {hook.name}: the URL holds credentials; requests are signed "
                   "with the secret instead")
        if hook.secret.kind == "plain":
            yield ("warning", path + ("secret",),
                   "plain-text webhook secret in the config: use {env: NAME}, {file: PATH} "
                   "or {credential: NAME}")
        if hook.retry.first > hook.retry.max:
            yield ("error", path + ("retry", "first"),
                   f"retry.first ({format_duration(hook.retry.first)}) is longer than "
                   f"retry.max ({format_duration(hook.retry.max)})")
        if hook.retry.lifetime < hook.retry.max:
            yield ("warning", path + ("retry", "lifetime"),
                   f"retry.lifetime ({format_duration(hook.retry.lifetime)}) is shorter "
                   f"than retry.max ({format_duration(hook.retry.max)}): an event a "
                   "receiver does not take may be dropped after a few tries")
