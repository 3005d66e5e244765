"""Commands of the activities side (registered on `mailsync.cli.main`)."""

from __future__ import annotations
