"""The configuration file: loading, schema, model, semantic checks, provider presets."""

from __future__ import annotations

from mailsync.config.load import Loaded, load_config, load_file, load_text
from mailsync.config.model import Config

__all__ = ["Config", "Loaded", "load_config", "load_file", "load_text"]
