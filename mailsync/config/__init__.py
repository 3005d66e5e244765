"""The configuration file: loading, schema, model, semantic checks, provider presets, and the
plan (what applying a new file changes), with the units its values are written in."""

from __future__ import annotations

from mailsync.config.load import Loaded, load_config, load_file, load_text
from mailsync.config.model import Config

__all__ = ["Config", "Loaded", "load_config", "load_file", "load_text"]
