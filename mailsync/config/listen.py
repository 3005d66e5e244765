"""Listen addresses (``daemon.metrics_listen``): what is wrong with one, in words.

The schema's ``listen`` pattern decides (so editors and check-jsonschema agree with
``mailsync validate``); :func:`explain` says why a value fails it: a port out of
1-65535, a host that is neither an IPv4 address, a bracketed IPv6 address nor a host name.
"""

from __future__ import annotations

import ipaddress
import re

ALLOWED = ("HOST:PORT with an IPv4 address, a [bracketed] IPv6 address or a host name, "
           "and a port 1-65535, e.g. 127.0.0.1:9877, [::1]:9877, localhost:9877")

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else host[1:]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return f"{inner!r} is not an IPv6 address"
        return None if host.endswith("]") and "%" not in inner else \
            f"{host!r} is not a bracketed IPv6 address"
    if ":" in host:
        return f"an IPv6 address takes brackets: [{host}]"
    if not host:
        return "no host before the port"
    labels = host.split(".")
    if all(label.isdigit() for label in labels if label) and labels[-1] != "":
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address (four numbers 0-255)"
        return None
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None or labels[-1].isdigit():
        return (f"{host!r} is not a host name (letters, digits and '-' between dots, "
                "at most 63 characters each)")
    return None


def explain(value: str) -> str:
    """Why ``value`` is not a listen address (a short phrase; empty if it looks fine)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return "no port (HOST:PORT)"
    if host.count(":") and not host.startswith("["):
        return f"an IPv6 address takes brackets: [{host}]:{port}"
    if not port.isdigit() or not port.isascii():
        return f"the port {port!r} is not a number"
    if port.startswith("0") and port != "0":
        return f"the port {port} has a leading zero (write {int(port)})"
    if not 1 <= int(port) <= 65535:
        return f"the port {port} is out of range (1-65535)"
    return _host_problem(host) or ""
