"""What applications import to send: ``mailsync.spool.drop(...)`` (docs/design.md §2)."""

from mailsync.outbound.spool import Attachment, drop, drop_eml

__all__ = ["Attachment", "drop", "drop_eml"]
