#!/usr/bin/env python3
"""How long a sender's claim of due messages takes as the queue grows (the store's write
transaction is held that long: every other sender's outcome waits behind it).

For each backlog in ``--backlog`` (default 5,000, 50,000 and 200,000 waiting messages,
~2 KB each, a tenth of them deferred and due), queues that many through the store's own
intake (`OutboundStore.ingest`, batches of 1,000), then claims batches of 200 (the
sender's ``CLAIM_BATCH``) as the sender does and times each claim. Prints one JSON line
per backlog: the median and the 90th percentile of ``--claims`` claims (default 25), and
the rows each returned. A claim that reads every waiting row grows with the backlog; one
that reads only what it takes stays flat.

SQLite on a loop-mounted journaled ext4 image when this runs as root (bench/benchfs.py);
``--store postgresql`` on a PostgreSQL started for the bench (bench/pgbench_support.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchfs import workdir  # bench/benchfs.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailsync.config.secrets import Secret  # noqa: E402
from mailsync.config.tree import StoreBackend  # noqa: E402
from mailsync.outbound.deliver import CLAIM_BATCH  # noqa: E402
from mailsync.outbound.enqueue import NewMessage  # noqa: E402
from mailsync.outbound.queue import OutboundStore  # noqa: E402
from mailsync.store import Store  # noqa: E402

BODY = b"Subject: backlog\r\nTo: a@example.org\r\n\r\n" + b"x" * 2000 + b"\r\n"


def fill(queue: OutboundStore, n: int, now: float) -> None:
    """``n`` queued messages, a tenth of them then deferred (due ``now``)."""
    for start in range(0, n, 1000):
        queue.ingest([NewMessage(f"m{i}.eml", f"sha-{i}", "app", "sales", "sales@example.com",
                                 f"<m{i}@example.com>", "backlog", BODY,
                                 (f"user{i}@example.org",))
                      for i in range(start, min(n, start + 1000))], now)
    with queue.store.transaction() as conn:
        conn.execute("UPDATE messages SET status = 'deferred', attempts = 1"
                     " WHERE id % 10 = 0")


@contextlib.contextmanager
def stores(kind: str) -> Iterator[tuple[Path, StoreBackend | None, str]]:
    """Yields (a state_dir, the backend, the filesystem or server) for each backlog."""
    if kind == "sqlite":
        with workdir() as (root, fs):
            yield root, None, fs
        return
    import pgbench_support  # bench/pgbench_support.py

    with pgbench_support.postgres() as (base, _port), workdir() as (root, _fs):
        yield root, StoreBackend("postgresql", Secret("plain", base)), "postgresql"


def one(kind: str, n: int, claims: int) -> dict[str, object]:
    with stores(kind) as (root, backend, where):
        if backend is not None:
            import pgbench_support

            db = pgbench_support._database(backend.dsn.ref, f"claims{n}")  # type: ignore[union-attr]
            backend = StoreBackend("postgresql", Secret("plain", db))
        store = Store.open(root / "state", backend=backend)
        try:
            queue = OutboundStore(store)
            now = time.time()
            fill(queue, n, now)
            times, sizes = [], []
            for _ in range(claims):
                start = time.perf_counter()
                got = queue.claim_due(now + 1, CLAIM_BATCH)
                times.append((time.perf_counter() - start) * 1000)
                sizes.append(len(got))
        finally:
            store.close()
    raw = list(times)
    times.sort()
    return {"bench": "claims", "store": kind, "backlog": n, "claims": claims,
            "claim_ms_median": round(statistics.median(times), 3),
            "claim_ms_p90": round(times[int(len(times) * 0.9)], 3),
            "rows_per_claim": statistics.median(sizes), "where": where,
            # In order: on PostgreSQL the first ones show the plan before autovacuum's
            # ANALYZE has seen the backlog (docs/postgresql.md).
            "claims_ms": [round(t, 1) for t in raw]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--backlog", type=int, nargs="+", default=[5000, 50000, 200000])
    parser.add_argument("--claims", type=int, default=25)
    args = parser.parse_args()
    for n in args.backlog:
        print(json.dumps(one(args.store, n, args.claims)), flush=True)


if __name__ == "__main__":
    main()
