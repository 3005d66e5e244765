"""``mailsync dkim keygen DOMAIN --selector S``: a new DKIM key and its DNS TXT record.

The key is written to a new file (0600, never over an existing one: a key in use must
not be lost to a typo), the record to be published and the ``dkim`` entry to add are
printed. docs/deliverability.md has the rotation steps.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailsync.cli.root import Exit, main

# Imports inside the command: `mailsync --help` imports every command module; the key
# code (cryptography) is loaded only when a key is made.

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _dns_name(value: str, what: str, *, dotted: bool) -> str:
    labels = value.rstrip(".").split(".")
    if not all(_LABEL.match(x) for x in labels) or (dotted and len(labels) < 2):
        example = "example.com" if dotted else "s2026"
        click.echo(f"error: {what} {value!r} is not a DNS name (letters, digits and "
                   f"hyphens between dots, e.g. {example})", err=True)
        raise Exit(2)
    return value.rstrip(".").lower() if dotted else value.rstrip(".")


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (docs/deliverability.md)."""


@dkim_group.command("keygen")
@click.argument("domain")
@click.option("--selector", "-s", required=True, help="The selector (s=) to publish under.")
@click.option("--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa",
              show_default=True, help="rsa (2048 bits: every receiver checks it) or ed25519 "
              "(RFC 8463; best as a second signature beside an RSA one).")
@click.option("--bits", type=click.IntRange(2048, 4096), default=2048, show_default=True,
              help="RSA key size (2048 keeps the TXT record within common DNS limits).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="The key file to write (default: DOMAIN.SELECTOR.key here).")
def keygen(domain: str, selector: str, kind: str, bits: int, output: Path | None) -> None:
    """Make a DKIM key for DOMAIN (0600, never over an existing file) and print the DNS
    TXT record to publish and the dkim entry to add to the configuration."""
    domain = _dns_name(domain, "domain", dotted=True)
    selector = _dns_name(selector, "selector", dotted=False)
    path = output if output is not None else Path(f"{domain}.{selector}.key")
    from mailsync import files  # the exclusive create with an exact mode
    from mailsync.config.dkimkeys import generate, txt_record

    pem, key = generate("rsa" if kind == "rsa" else "ed25519", bits)
    try:
        files.write_new(path, pem, mode=0o600)
    except FileExistsError:
        click.echo(f"error: {path} exists: not overwritten (a key in use would be lost); "
                   "choose another --output, or remove the file first", err=True)
        raise Exit(1) from None
    except OSError as exc:
        click.echo(f"error: cannot write {path}: {exc.strerror or exc}", err=True)
        raise Exit(1) from None
    click.echo(f"wrote the {key.k} key to {path} (0600; chown it to the daemon's user)",
               err=True)
    click.echo("; publish this TXT record, then add the dkim entry below:")
    click.echo(txt_record(domain, selector, key))
    click.echo("; dkim:")
    click.echo(f";   - {{domain: {domain}, selector: {selector}, "
               f"private_key: {{file: {path.resolve()}}}}}")
