"""Whether the store backend a configuration names can be used on this machine.

`mailsync validate` warns, and the store refuses to open, when ``daemon.store`` names
PostgreSQL but its driver is not installed; both say the same thing, from here. The
packages are looked for, never imported (an SQLite user and a one-shot command pay
nothing for them).
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'mailsync[postgresql]' (psycopg 3 and psycopg_pool)"


def missing_driver() -> str | None:
    """Why the PostgreSQL store cannot be used here (psycopg or psycopg_pool is not
    installed), or None."""
    absent = [name for name in ("psycopg", "psycopg_pool")
              if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return (f"daemon.store names postgresql, but {' and '.join(absent)} "
            f"{'is' if len(absent) == 1 else 'are'} not installed: {INSTALL_HINT}")
