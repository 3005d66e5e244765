"""A reload (file change after a short debounce, unless ``daemon.auto_reload`` is false;
SIGHUP; ``mailsync reload``), run in the supervisor: load → validate → plan → apply.

Applying is one ``part.reconfigure(new)`` after another, the list made from the plan
(:func:`parts_for`): the senders, the spool intake, the pollers, the metrics' series and
the activity hook always (each keeps what did not change: pools of unchanged servers keep
their sessions, pollers of unchanged mailboxes keep theirs); the spool watch, the
``/metrics`` endpoint and the log format when the plan changes their ``daemon`` setting.
What can fail (binding a new ``metrics_listen``) comes first, so a refusal leaves
everything as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from mailsync.config.load import Loaded, load_text, read_text
from mailsync.config.model import Config
from mailsync.config.plan import Plan, diff
from mailsync.daemon.runtime import Runtime
from mailsync.daemon.sdnotify import Notifier
from mailsync.daemon.watch import Watch
from mailsync.errors import ConfigError
from mailsync.telemetry import logs
from mailsync.telemetry.exporter import parse_listen, start_exporter
from mailsync.telemetry.metrics import Metrics
from mailsync.values import field, valueclass

log = logging.getLogger("mailsync.daemon")


class Part(Protocol):
    """A live part of the daemon that takes a new configuration."""

    def reconfigure(self, config: Config) -> None: ...


@valueclass(frozen=False)
class ReloadOutcome:
    """What a reload did: ``applied``, ``unchanged`` or ``refused``."""

    result: str
    summary: str
    errors: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result != "refused"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "summary": self.summary,
                "errors": self.errors, "changes": self.changes, "held": self.held}


class Request:
    """A reload asked for from another thread, answered by the supervisor."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.done = threading.Event()
        self.outcome: ReloadOutcome | None = None


def daemon_changes(plan: Plan) -> set[str]:
    """The ``daemon`` settings ``plan`` changes (``metrics_listen``, ``spool_dir``, ...)."""
    return {c.attr for a in plan.actions if a.section == "daemon" for c in a.changes}


@valueclass(frozen=False)
class Parts:
    """The live parts a reload reconfigures; see :func:`parts_for` for which and when."""

    always: list[Part]             # in this order: senders, spool intake, pollers, ...
    by_setting: dict[str, Part]    # a daemon setting -> the part that serves it


def parts_for(plan: Plan, parts: Parts) -> list[Part]:
    """The parts to reconfigure for ``plan``, in order."""
    changed = daemon_changes(plan)
    return parts.always + [part for setting, part in parts.by_setting.items()
                           if setting in changed]


def set_reload_metrics(metrics: Metrics, loaded: Loaded | None, *, ok: bool,
                       count: bool = True) -> None:
    if count:
        metrics.config_reloads.labels("success" if ok else "failure").inc()
    metrics.config_last_reload_successful.set(1 if ok else 0)
    if ok and loaded is not None:
        metrics.config_last_reload_success_timestamp.set(time.time())
        metrics.config_hash.set(int(loaded.sha256[:13], 16))


class Endpoint:
    """The ``/metrics`` and ``/healthz`` endpoint on ``daemon.metrics_listen``."""

    def __init__(self, registry: Any, health: Callable[[], tuple[bool, str]]) -> None:
        self._registry = registry
        self._health = health
        self._exporter: Any = None
        self._pending: Any = None

    def start(self, listen: str) -> None:
        self._exporter = start_exporter(listen, self._registry, self._health)

    def bind(self, listen: str, old_listen: str) -> str | None:
        """Bind ``listen`` before the old address is let go (:meth:`reconfigure` moves to
        it); why not, when impossible.

        A move on the same port (127.0.0.1:9877 to 0.0.0.0:9877) cannot bind beside the
        old socket: the old one is closed first, and bound again if the new one fails.
        """
        try:
            self._pending = start_exporter(listen, self._registry, self._health)
            return None
        except ValueError as exc:
            return f"daemon.metrics_listen {listen}: {exc}"
        except OSError as exc:
            first = exc
        # Both parse: the new one did above (or ValueError came back), the old one is bound.
        same_port = parse_listen(listen)[1] == parse_listen(old_listen)[1]
        if same_port and first.errno == errno.EADDRINUSE:
            self._exporter.close()
            try:
                self._pending = start_exporter(listen, self._registry, self._health)
                return None
            except OSError as exc:
                first = exc
            self._exporter = start_exporter(old_listen, self._registry, self._health)
        return f"daemon.metrics_listen {listen}: {first.strerror or first}"

    def reconfigure(self, config: Config) -> None:
        """Serve on the address :meth:`bind` bound; the old one is closed."""
        if self._pending is not None:
            self._exporter.close()
            self._exporter, self._pending = self._pending, None

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()


class LogFormat:
    """The log's format (``daemon.log_format``: text or JSON)."""

    def reconfigure(self, config: Config) -> None:
        logs.setup(config.daemon.log_format)


class Series:
    """The metrics' series the configuration makes known: primed at 0, and those of the
    servers that left it removed."""

    def __init__(self, metrics: Metrics, config: Config) -> None:
        self._metrics = metrics
        self._config = config

    def reconfigure(self, config: Config) -> None:
        m, old = self._metrics, self._config
        m.prime(config)
        for name in set(old.sending_servers()) - set(config.sending_servers()):
            with contextlib.suppress(KeyError):
                m.server_up.remove(name, "outgoing")
            with contextlib.suppress(KeyError):
                m.pool_concurrency.remove(name)
        incoming = {s.name for s in config.incoming_servers}
        for name in {s.name for s in old.incoming_servers} - incoming:
            with contextlib.suppress(KeyError):
                m.server_up.remove(name, "incoming")
            with contextlib.suppress(KeyError):
                m.mailbox_poll_interval.remove(name)
        self._config = config


class Reloader:
    """Reloads the daemon's file into its runtime and parts (supervisor thread only)."""

    def __init__(self, runtime: Runtime, parts: Parts, *, watch: Watch, endpoint: Endpoint,
                 notifier: Notifier, summary: Callable[[], str],
                 wake_sender: Callable[[], None]) -> None:
        self.runtime = runtime
        self.parts = parts
        self.last: dict[str, Any] | None = None  # the last outcome, for `mailsync status`
        self._watch = watch
        self._endpoint = endpoint
        self._notifier = notifier
        self._summary = summary
        self._wake_sender = wake_sender

    def file_changed(self, source: str) -> None:
        """The config file was saved: reload it, unless ``daemon.auto_reload`` (of the
        configuration in force) is false; then only say so, once per new content, so that
        `mailsync plan` on the live file is the review before `mailsync reload` applies."""
        if self.runtime.config.daemon.auto_reload:
            self.reload(source)
            return
        watch = self._watch
        watch.acted()
        sha256 = watch.sha256()
        if sha256 in (watch.unapplied_sha256, self.runtime.loaded.sha256):
            return
        watch.unapplied_sha256 = sha256
        log.info("config changed; not applied (auto_reload: false): `mailsync plan -c %s` "
                 "shows what applying it would change, `mailsync reload` or SIGHUP applies it",
                 self.runtime.config_path)

    def reload(self, source: str) -> ReloadOutcome:
        """Load → validate → plan → apply."""
        self._watch.unapplied_sha256 = None
        self._watch.acted()
        self._notifier.reloading(f"reloading ({source})")
        try:
            outcome = self._reload()
        except Exception as exc:  # noqa: BLE001 - the old config stays; the daemon lives
            log.exception("reload failed")
            outcome = ReloadOutcome("refused", f"internal error while applying: {exc}",
                                    [str(exc)])
        metrics = self.runtime.metrics
        if outcome.result == "refused":
            set_reload_metrics(metrics, None, ok=False)
            log.error("config reload (%s) refused, the configuration in force stays: %s",
                      source, outcome.summary)
            for line in outcome.errors:
                log.error("  %s", line)
        else:
            set_reload_metrics(metrics, self.runtime.loaded, ok=True)
            log.info("config reload (%s): %s: %s", source, outcome.result, outcome.summary)
            for line in outcome.changes:
                log.info("  %s", line)
            if outcome.result == "applied":
                for problem in self.runtime.loaded.warnings:
                    log.warning("%s", problem.render())
        self.last = {"result": outcome.result, "at": time.time(), "source": source,
                     "summary": outcome.summary, "errors": outcome.errors[:3],
                     "error_count": len(outcome.errors)}
        self._notifier.ready(self._summary())
        return outcome

    def _reload(self) -> ReloadOutcome:
        path = self.runtime.config_path
        try:
            text = read_text(path)
        except ConfigError as exc:
            return ReloadOutcome("refused", str(exc), [str(exc)])
        loaded = load_text(text, str(path), path.resolve().parent)
        if loaded.errors or loaded.config is None:
            errors = [p.render() for p in loaded.errors]
            return ReloadOutcome("refused", f"{len(errors)} error(s) in {path}", errors)
        if loaded.sha256 == self.runtime.loaded.sha256:
            return ReloadOutcome("unchanged", "the file is the configuration in force")
        new, old = loaded.config, self.runtime.config
        if new.daemon.state_dir != old.daemon.state_dir:
            why = (f"daemon.state_dir changed ({old.daemon.state_dir} → "
                   f"{new.daemon.state_dir}): the store cannot move while running; restart")
            return ReloadOutcome("refused", why, [why])
        if new.daemon.store != old.daemon.store:
            why = "daemon.store changed: the store cannot move while running; restart"
            return ReloadOutcome("refused", why, [why])
        if (new.daemon.node, new.daemon.send_lease) != (old.daemon.node, old.daemon.send_lease):
            why = "daemon.node or daemon.send_lease changed: this node's claims hold them; restart"
            return ReloadOutcome("refused", why, [why])
        plan = diff(old, new)
        # What can fail comes first, so a refusal leaves everything as it was.
        if "metrics_listen" in daemon_changes(plan):
            refused = self._endpoint.bind(new.daemon.metrics_listen, old.daemon.metrics_listen)
            if refused is not None:
                return ReloadOutcome("refused", refused, [refused])
        self.runtime.reconfigure(loaded)  # the configuration in force, the activity hook
        for part in parts_for(plan, self.parts):
            part.reconfigure(new)
        self.runtime.record_applied(loaded)
        self._wake_sender()
        held = self.runtime.outbound.hold_missing_accounts([a.name for a in new.accounts],
                                                           time.time())
        for account, count in held.items():
            log.warning("account %s left the configuration: %d waiting messages held "
                        "(`mailsync queue release ID` once it is back)", account, count)
        return ReloadOutcome("applied", plan.summary(), changes=plan.lines(), held=held)
