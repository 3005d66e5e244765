"""`bench/outbound.py --store postgresql [--nodes N]`: the same burst on a PostgreSQL store.

Starts a PostgreSQL of its own for the benchmark (``initdb`` in a scratch directory, as
``nobody`` when run as root, on a free loopback port; durable: ``fsync`` on, and mailsync
sets ``synchronous_commit = on`` on every connection), then, for each run, a fresh
database, each node's state prepared as outbound.py's are (two earlier `run --once`: the
migrations applied, the verdict remembered; not with ``--first-run``), and:

- one node: `mailsync run --once` on N spooled messages, as the SQLite bench does;
- ``--nodes K``: K nodes (each its own state_dir and spool, N/K messages in each, one
  database), their `run --once` started together; the rate is N over the time until the
  last one exits.

The server runs with PostgreSQL's default settings (:data:`SETTINGS`, printed in the
first line): a commit waits for its WAL flush, as in production. Each run also runs the
SQLite bench of the same size (beside it in the output), so that both figures come from
the same minutes of a shared machine. Imported by outbound.py.

Each PostgreSQL line also says where a run's time went, so that a figure comes with its
bound: the server's WAL flushes (``pg_stat_wal``, with ``track_wal_io_timing`` on: how
many per message, their mean time, and the share of the run one was in progress), the
server's CPU per message (its processes' in /proc), and how busy the machine's cores
were (/proc/stat: below 1.0, the run waited for something other than CPU).

``--pg-statements`` is a diagnostic too: the server loads ``pg_stat_statements``, and
each PostgreSQL run's line holds the statements that took the server's time in that run
(``statements``: the ten with the most execution time; calls, milliseconds and rows per
message sent) and what mailsync's busy connections were doing (``waits``: the share of
samples of ``pg_stat_activity``, taken every 5 ms by a thread of the bench, in each wait
event, ``CPU`` for none, with the statement's first words), to see which of mailsync's
statements a change should make cheaper and whether they run or wait.

``--pg-fsync-off`` is a diagnostic, not the issue's figure: the server runs with ``fsync
= off``, so a commit's WAL flush costs nothing (and a crash of the machine could lose
commits). It shows what bounds the rate when the disk does not: on a 2-core machine, the
cores (the lines' ``machine_busy``). Its lines and summary say ``"durable": false`` and
the summary judges no target.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchfs import workdir  # bench/benchfs.py, beside this script

TARGET_ONE = 1500  # msg/s, one node
TARGET_SCALE = 1.5  # K nodes together, times one node


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="postgresql: the store in a PostgreSQL started for the bench")
    parser.add_argument("--nodes", type=int, default=1,
                        help="with --store postgresql: nodes sharing the database")
    parser.add_argument("--pg-fsync-off", action="store_true",
                        help="diagnostic: the bench's PostgreSQL with fsync off (commits "
                             "not durable), to see the bound when the disk's flush is free")
    parser.add_argument("--pg-statements", action="store_true",
                        help="diagnostic: in each PostgreSQL run's line, the statements "
                             "that took the server's time (pg_stat_statements) and what "
                             "the busy connections waited for (pg_stat_activity)")


@contextlib.contextmanager
def postgres(fsync: bool = True, statements: bool = False) -> Iterator[tuple[str, int]]:
    """A PostgreSQL cluster for the bench; yields (superuser DSN without dbname, port).
    ``fsync=False``: the ``--pg-fsync-off`` diagnostic (commits not durable);
    ``statements``: ``--pg-statements`` (pg_stat_statements loaded)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if not found:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bindir = Path(found[0]).parent
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    with workdir() as (root, fs):
        data = root / "pgdata"
        sockets = Path(tempfile.mkdtemp(prefix="mailsync-bench-pgsock-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        pw = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        root.parent.chmod(0o755)  # the scratch dir above the mount: the server's user enters

        def as_user(*args: str) -> None:
            cmd = list(args)
            if os.geteuid() == 0:
                cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                       "--clear-groups", "--", *cmd]
            subprocess.run(cmd, check=True, capture_output=True, cwd=root)

        as_user(str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C")
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={sockets} -c max_connections=100 "
                   "-c shared_buffers=128MB "  # fsync and full_page_writes on: durable
                   "-c track_wal_io_timing=on"  # the WAL flushes' time, in pg_stat_wal
                   + ("" if fsync else " -c fsync=off")
                   + (" -c shared_preload_libraries=pg_stat_statements"
                      " -c pg_stat_statements.track=all" if statements else ""))
        as_user(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"),
                "-o", options, "-w", "start")
        print(json.dumps({"postgresql": str(bindir.parent.name), "data_filesystem": fs,
                          "settings": _settings(f"postgresql://postgres@127.0.0.1:{port}")}),
              flush=True)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}", port
        finally:
            subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                            "--clear-groups", "--", str(bindir / "pg_ctl"), "-D", str(data),
                            "-m", "fast", "-w", "stop"] if os.geteuid() == 0 else
                           [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "stop"], capture_output=True)
            shutil.rmtree(sockets, ignore_errors=True)


# The server settings that decide a commit's cost, printed with the figures. All are
# PostgreSQL's defaults (shared_buffers 128MB, wal_buffers -1: 1/32 of it, commit_delay
# 0: no flush waits for others), with fsync and full_page_writes on; mailsync sets
# synchronous_commit = on itself. Nothing is tuned for the benchmark.
SETTINGS = ("shared_buffers", "wal_buffers", "commit_delay", "commit_siblings", "fsync",
            "full_page_writes", "synchronous_commit", "wal_sync_method", "max_connections")


def _settings(base: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in SETTINGS}


def _database(base: str, name: str, statements: bool = False) -> str:
    import psycopg

    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    if statements:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
    return f"{base}/{name}"


# pg_stat_statements' view of a run: the statements with the most execution time (the
# bench's own, reading counters, left out), one query text each, whitespace folded.
_STATEMENTS = (
    "SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g')"
    " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
    " WHERE datname = current_database()) AND query !~* 'pg_stat_|pg_database'"
    " ORDER BY total_exec_time DESC LIMIT 10")


def _statements(dsn: str, reset: bool) -> list[tuple[Any, ...]]:
    """The top statements since the last reset (calls, ms, rows, query); with ``reset``,
    only reset the counters (before a run)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if reset:
            conn.execute("SELECT pg_stat_statements_reset()")
            return []
        return conn.execute(_STATEMENTS).fetchall()  # type: ignore[arg-type]


class _Waits:
    """What the run's busy backends wait for: ``pg_stat_activity`` sampled every 5 ms on
    a connection of its own, in a thread, from ``start()`` to ``stop()``."""

    def __init__(self, dsn: str) -> None:
        import threading

        self.dsn = dsn
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _sample(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(0.005):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'),"
                    " left(regexp_replace(query, '\\s+', ' ', 'g'), 40)"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'active' AND pid <> pg_backend_pid()").fetchall()
                for wait, query in rows:
                    key = f"{wait} {query}"
                    self.counts[key] = self.counts.get(key, 0) + 1

    def stop(self) -> dict[str, float]:
        """The ten commonest (wait, statement) pairs, as shares of all busy samples."""
        self._stop.set()
        self._thread.join()
        total = max(1, sum(self.counts.values()))
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:10]
        return {key: round(n / total, 3) for key, n in top}


def _per_message(rows: list[tuple[Any, ...]], sent: int) -> list[dict[str, object]]:
    per = max(sent, 1)
    return [{"calls_per_message": round(calls / per, 3),
             "exec_ms_per_message": round(ms / per, 4),
             "rows_per_message": round(n / per, 3), "query": query[:200]}
            for calls, ms, n, query in rows]


_WAL = "SELECT wal_sync, wal_sync_time, wal_records, wal_bytes FROM pg_stat_wal"


def _wal(dsn: str) -> tuple[float, ...]:
    """The server's WAL counters now: flushes, their ms, records, bytes."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_WAL).fetchone()
    assert row is not None
    return tuple(float(v) for v in row)


def _server_cpu() -> float:
    """CPU seconds of every PostgreSQL process so far (its backends exit with their
    connections, so take it while they live: after the run, add the ones gone)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
            # the postmaster (its path), its children (their titles: "postgres: ...")
            if not (argv0.startswith(b"postgres:") or argv0.endswith(b"/postgres")):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime and the waited-for children's (a backend is the postmaster's)
        total += sum(int(v) for v in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _cores() -> tuple[int, int]:
    """(all, idle) jiffies of the machine's cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]  # idle and iowait


Prepare = Callable[[Path, Path, dict[str, str]], None]


def pg_run(n: int, nodes: int, port: int, dsn: str, config: str,
           drop: Callable[[Path, int], None], prepare: Prepare | None = None,
           statements: bool = False) -> dict[str, object]:
    """One burst of ``n`` messages through ``nodes`` nodes sharing the database ``dsn``;
    ``prepare(config, spool, env)`` first, for each node (the state its earlier runs
    leave), unless it is None. ``statements`` (``--pg-statements``): the run's line also
    holds its top statements and its busy connections' waits."""
    env = {**os.environ, "MAILSYNC_DSN": dsn}
    with workdir() as (root, fs):
        cfgs = []
        for k in range(nodes):
            home = root / f"node{k}"
            home.mkdir()
            cfg = home / "config.yaml"
            cfg.write_text(config.format(root=home, port=port).replace(
                "daemon:\n", f"daemon:\n  node: node{k}\n  store: {{postgresql: {{dsn: "
                "{env: MAILSYNC_DSN}, pool_size: 8}}\n", 1))
            if prepare is not None:
                prepare(cfg, home / "spool", env)
            drop(home / "spool", n // nodes + (1 if k < n % nodes else 0))
            cfgs.append(cfg)
        waits = _Waits(dsn) if statements else None
        if waits is not None:
            _statements(dsn, reset=True)
            waits.start()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        wal, server, cores = _wal(dsn), _server_cpu(), _cores()
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "mailsync", "run", "--once", "-c",
                                   str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for cfg in cfgs]
        outs = [p.communicate() for p in procs]
        elapsed = time.perf_counter() - start
        busy = waits.stop() if waits is not None else None
        cores_after = _cores()
        server = _server_cpu() - server  # the postmaster has reaped the run's backends
        syncs, sync_ms, records, wal_bytes = (b - a for a, b in zip(wal, _wal(dsn),
                                                                     strict=True))
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime - cpu
        for p, (_, err) in zip(procs, outs, strict=True):
            if p.returncode != 0:
                raise SystemExit(f"mailsync failed: {err[-2000:]}")
        import psycopg

        top = _statements(dsn, reset=False) if statements else None  # before the count
        with psycopg.connect(dsn) as conn:
            sent = int(conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'"
                                    ).fetchone()[0])  # type: ignore[index]
        return {"bench": "outbound", "store": "postgresql", "nodes": nodes, "messages": n,
                "sent": sent, "seconds": round(elapsed, 3),
                "messages_per_s": round(sent / elapsed, 1),
                # CPU of the mailsync processes (the database server's is not counted).
                "cpu_ms_per_message": round(cpu * 1000 / max(sent, 1), 4),
                "server_cpu_ms_per_message": round(server * 1000 / max(sent, 1), 4),
                "machine_busy": round(1 - (cores_after[1] - cores[1])
                                      / max(1, cores_after[0] - cores[0]), 3),
                "wal_flushes_per_message": round(syncs / max(sent, 1), 3),
                "wal_flush_ms": round(sync_ms / max(syncs, 1), 3),
                "wal_flush_busy": round(sync_ms / 1000 / elapsed, 3),
                "wal_records_per_message": round(records / max(sent, 1), 1),
                "wal_kb_per_message": round(wal_bytes / 1024 / max(sent, 1), 2),
                "filesystem": fs,
                **({"statements": _per_message(top, sent), "waits": busy}
                   if top is not None else {})}


def main(args: argparse.Namespace, *, one_run: Callable[[int, int], dict[str, object]],
         config: str, drop: Callable[[Path, int], None],
         sink: Callable[[int], contextlib.AbstractContextManager[str]],
         free_port: Callable[[], int], prepare: Prepare | None, state: str) -> None:
    """The PostgreSQL figures (one node and, with --nodes, K nodes), each run beside
    the SQLite one; medians of the runs."""
    port = free_port()
    rows: dict[str, list[float]] = {"sqlite": [], "postgresql_1": []}
    if args.nodes > 1:
        rows[f"postgresql_{args.nodes}"] = []
    durable = not args.pg_fsync_off
    with postgres(fsync=durable, statements=args.pg_statements) as (base, _), \
            sink(port) as sink_name:
        for i in range(args.runs):
            lite = one_run(args.n, port)
            rows["sqlite"].append(float(lite["messages_per_s"]))  # type: ignore[arg-type]
            print(json.dumps({**lite, "store": "sqlite", "sink": sink_name}), flush=True)
            for k in sorted({1, args.nodes}):
                r = pg_run(args.n, k, port,
                           _database(base, f"bench_{i}_{k}", args.pg_statements), config,
                           drop, prepare, args.pg_statements)
                r["sink"] = sink_name
                r["state"] = state
                r["durable"] = durable
                rows[f"postgresql_{k}"].append(float(r["messages_per_s"]))  # type: ignore[arg-type]
                print(json.dumps(r), flush=True)
    medians = {k: statistics.median(v) for k, v in rows.items()}
    one = medians["postgresql_1"]
    summary: dict[str, object] = {
        "bench": "outbound", "summary": True, "runs": args.runs, "messages": args.n,
        "median_messages_per_s": medians, "state": state,
        "targets": {"postgresql_1": TARGET_ONE}}
    ok = one >= TARGET_ONE
    if args.nodes > 1:
        many = medians[f"postgresql_{args.nodes}"]
        summary["scale"] = round(many / one, 2) if one else 0.0
        summary["targets"] = {"postgresql_1": TARGET_ONE,  # type: ignore[dict-item]
                              f"postgresql_{args.nodes}": f"{TARGET_SCALE}x postgresql_1"}
        ok = ok and many >= TARGET_SCALE * one
    summary["durable"] = durable
    summary["ok"] = ok if durable else None  # the targets are for durable commits
    print(json.dumps(summary), flush=True)
