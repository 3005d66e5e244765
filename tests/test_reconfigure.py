"""One way to hand a new configuration to a live part: ``reconfigure(config)``, the parts
chosen from the reload's plan (daemon/reload.py)."""

from __future__ import annotations

from mailsync.config.model import Config
from mailsync.config.plan import diff
from mailsync.daemon.reload import Parts, parts_for
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.pickup import PickupService
from mailsync.outbound.spool import drop, ensure_dirs
from mailsync.outbound.verp import load_key
from mailsync.telemetry.metrics import Metrics
from mailsync.values import replace
from tests.outbound_helpers import load, open_store, server_yaml, write_config


class _Part:
    def __init__(self, name: str, seen: list[tuple[str, Config]]) -> None:
        self.name, self.seen = name, seen

    def reconfigure(self, config: Config) -> None:
        self.seen.append((self.name, config))


def _granted(config: Config, user: str) -> Config:
    return replace(config, accounts=tuple(
        replace(a, granted_to=(*a.granted_to, user)) for a in config.accounts))


def test_the_plan_chooses_the_parts_a_reload_reconfigures(tmp_path):
    config = load(write_config(tmp_path, server_yaml("main", 2525)))
    seen: list[tuple[str, Config]] = []
    parts = Parts(always=[_Part("senders", seen), _Part("mailboxes", seen)],
                  by_setting={"spool_dir": _Part("watch", seen),
                              "log_format": _Part("logs", seen)})
    json_logs = replace(config, daemon=replace(config.daemon, log_format="json"))
    for part in parts_for(diff(config, json_logs), parts):
        part.reconfigure(json_logs)
    assert seen == [("senders", json_logs), ("mailboxes", json_logs), ("logs", json_logs)]
    seen.clear()
    for part in parts_for(diff(config, _granted(config, "carol")), parts):
        part.reconfigure(config)
    assert [name for name, _ in seen] == ["senders", "mailboxes"]  # no daemon setting


def test_a_reconfigured_ingester_takes_the_new_spool_under_the_new_grants(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    config = load(cfg)
    store, outbound = open_store(cfg)
    try:
        ingester = Ingester(config, outbound, Metrics())
        drop(tmp_path / "spool", user="carol", account="sales", subject="s", text="x",
             to=["a@example.org"])
        assert ingester.run_once().rejected == 1  # carol may not send as sales
        moved = _granted(replace(config, daemon=replace(
            config.daemon, spool_dir=tmp_path / "outbox")), "carol")
        ingester.reconfigure(moved)
        assert (tmp_path / "outbox" / "new").is_dir()
        drop(tmp_path / "outbox", user="carol", account="sales", subject="s", text="x",
             to=["a@example.org"])
        stats = ingester.run_once()
        assert (stats.queued, stats.rejected) == (1, 0)
    finally:
        store.close()


def test_the_pickup_child_runs_the_next_pass_under_the_config_handed_to_it(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    config = load(cfg)
    store, _ = open_store(cfg)
    store.close()
    ensure_dirs(config.daemon.spool_dir)
    pickup = PickupService(config, load_key(config.daemon.state_dir))
    try:
        metrics = Metrics()
        drop(tmp_path / "spool", user="carol", account="sales", subject="s", text="x",
             to=["a@example.org"])
        assert pickup.run_pass(metrics).rejected == 1
        pickup.reconfigure(_granted(config, "carol"))
        drop(tmp_path / "spool", user="carol", account="sales", subject="t", text="x",
             to=["a@example.org"])
        stats = pickup.run_pass(metrics)
        assert (stats.queued, stats.rejected) == (1, 0)
    finally:
        pickup.close()
