"""Commands of the inbound side (registered on `mailsync.cli.main`)."""

from __future__ import annotations
