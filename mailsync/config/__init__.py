"""The configuration file: loading, schema, model, semantic checks, provider presets, and the
plan (what applying a new file changes), with the units its values are written in.

``from mailsync.config import load_file`` (and the other names of ``__all__``) imports the
loader when a name is first asked for, not when any module of the package is imported:
``mailsync status`` reads only the YAML of the file (:mod:`~mailsync.config.yamlload`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailsync.config.load import Loaded, load_config, load_file, load_text
    from mailsync.config.model import Config

__all__ = ["Config", "Loaded", "load_config", "load_file", "load_text"]

_HOME = {"Config": "mailsync.config.model", "Loaded": "mailsync.config.load",
         "load_config": "mailsync.config.load", "load_file": "mailsync.config.load",
         "load_text": "mailsync.config.load"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
