"""imapclient without importlib.metadata: its version read from its own dist-info.

imapclient's package ``__init__`` asks ``importlib.metadata.version("imapclient")`` for
its ``__version__``, and importing importlib.metadata (zipfile, csv, the email package's
message classes) costs ~7 ms of a one-shot IMAP poll, for a string mailsync never reads.
:func:`prepare`, called before imapclient is first imported, puts in place of
``imapclient/version.py`` a module holding the same two values, read from the same
place importlib.metadata reads them (the ``Version:`` line of the METADATA file in the
``imapclient-*.dist-info`` directory beside the package).

Only while imapclient's version.py is the one this was written for (the text below);
otherwise, or when there is not exactly one dist-info for it or its version is not
``X.Y.Z``, nothing is done and imapclient imports importlib.metadata as usual.
"""

from __future__ import annotations

import os
import re
import sys
import types
from importlib.util import find_spec

# imapclient's version.py (2.x to 4.x), without its licence comment.
KNOWN = '''from importlib import metadata
from typing import Tuple

version = metadata.version("imapclient")


def _make_version_info() -> Tuple[int, int, int, str]:
    major, minor, micro = version.split(".")
    return (int(major), int(minor), int(micro), "final")


# This is for backwards compatibility with older versions of IMAPClient only
version_info = _make_version_info()
'''
_VERSION = re.compile(r"^Version:[ \t]*([0-9]+)\.([0-9]+)\.([0-9]+)[ \t]*$", re.MULTILINE)


def _code(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()


def prepare() -> None:
    """Make the next ``import imapclient`` skip importlib.metadata (see the module's doc)."""
    if "imapclient" in sys.modules or "imapclient.version" in sys.modules:
        return
    try:
        spec = find_spec("imapclient")
        if spec is None or not spec.submodule_search_locations:
            return
        package = next(iter(spec.submodule_search_locations))
        with open(os.path.join(package, "version.py"), encoding="utf-8") as f:
            own = f.read()
        if _code(own) != _code(KNOWN):
            return
        site = os.path.dirname(package)
        infos = [n for n in os.listdir(site)
                 if n.lower().startswith("imapclient-") and n.endswith(".dist-info")]
        if len(infos) != 1:
            return
        with open(os.path.join(site, infos[0], "METADATA"), encoding="utf-8") as f:
            found = _VERSION.search(f.read(1 << 16))
    except (OSError, ValueError, ImportError, UnicodeError):
        return
    if found is None:
        return
    module = types.ModuleType("imapclient.version", "imapclient's version (see "
                              "mailsync.inbound.imapclientversion)")
    module.version = ".".join(found.groups())  # type: ignore[attr-defined]
    module.version_info = (*map(int, found.groups()), "final")  # type: ignore[attr-defined]
    module.__file__ = os.path.join(package, "version.py")
    sys.modules["imapclient.version"] = module
