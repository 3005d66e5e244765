"""mailsync: a declarative, configuration-as-code mail daemon."""

from __future__ import annotations

__version__ = "0.1.0"
