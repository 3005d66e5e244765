"""Prometheus metrics (docs/design.md §6): one registry, injected; label values are config names.

Series known to exist (each declared server, account, reason) are created at 0 by
:meth:`Metrics.prime`, so dashboards and alerts see them before the first event.

The one-shot commands (``run --once``, ``inbox poll``) serve no ``/metrics``: their
:class:`Metrics` is ``served=False``, whose series count nothing and which does not import
prometheus_client (~8 ms of a cron run's start, #19).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from mailsync import __version__
from mailsync.config.model import Config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

REJECT_REASONS = ("unparseable", "unknown_user", "impersonation", "ungranted_account",
                  "no_account", "no_recipients", "bad_recipient", "header_injection",
                  "oversize", "unreadable", "not_a_regular_file")
FAIL_REASONS = ("permanent", "expired", "suppressed")
SUPPRESSION_REASONS = ("bounced", "rejected", "manual")  # outbound.suppression.REASONS
ATTEMPT_RESULTS = ("sent", "deferred", "failed", "connect_error")
OAUTH2_RESULTS = ("success", "failure")
BOUNCE_REFUSED = ("unsigned", "bad_signature", "not_a_bounce")  # bounces.Verdict.refused
# inbound.source.Skipped.reason, by incoming server type
SKIP_REASONS = {"imap": ("too_large", "oversized_literal"),
                "pop": ("too_large", "oversized_retr"), "local": ("too_large",)}


class _Unserved:
    """A series of a process that serves no ``/metrics``: it takes every update the parts
    make and keeps none (nobody could read it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *values: str, **named: str) -> _Unserved:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def info(self, val: dict[str, str]) -> None:
        pass

    def collect(self) -> list[Any]:
        return []


class Metrics:
    """Every mailsync series, registered in ``registry`` (a fresh one by default).

    ``served=False``: series that count nothing, for a process that serves no
    ``/metrics`` (it has no :attr:`registry`, and prometheus_client is not imported)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 served: bool = True) -> None:
        r: CollectorRegistry | None = None
        if served:
            import prometheus_client as prometheus

            r = registry if registry is not None else prometheus.CollectorRegistry()
            counter, gauge = prometheus.Counter, prometheus.Gauge
            histogram, info = prometheus.Histogram, prometheus.Info
        else:
            counter = gauge = histogram = info = cast(Any, _Unserved)
        self._registry = r
        self.messages_sent = counter(
            "mailsync_messages_sent", "Messages accepted by an SMTP server.",
            ["account", "server"], registry=r)
        self.messages_failed = counter(
            "mailsync_messages_failed", "Messages that failed permanently.",
            ["account", "reason"], registry=r)
        self.messages_deferred = counter(
            "mailsync_messages_deferred", "Send attempts that ended in a deferral.",
            ["server"], registry=r)
        self.messages_rejected = counter(
            "mailsync_messages_rejected", "Spool files refused, by reason.",
            ["reason"], registry=r)
        self.spool_duplicates = counter(
            "mailsync_spool_duplicates",
            "Spool files not queued because their idempotency key was seen before.",
            registry=r)
        self.spool_intake_failing = gauge(
            "mailsync_spool_intake_failing",
            "1 while the daemon's spool passes fail on an error of mailsync's own (a DKIM "
            "key it cannot read): files wait in spool/new/ (a store that cannot commit is "
            "mailsync_store_commit_failing).", registry=r)
        self.recipients_suppressed = counter(
            "mailsync_recipients_suppressed",
            "Recipients not sent to because they are on the suppression list, by account "
            "and by the reason of their entry (bounced: a DSN, rejected: a 5xx at RCPT, "
            "manual).", ["account", "reason"], registry=r)
        self.messages_bounced = counter(
            "mailsync_messages_bounced", "Sent messages that bounced.", ["account"], registry=r)
        self.oauth2_refreshes = counter(
            "mailsync_oauth2_token_refreshes",
            "OAuth2 access tokens asked for at the token endpoint, by server and result.",
            ["server", "result"], registry=r)
        self.oauth2_expiry = gauge(
            "mailsync_oauth2_token_expiry_timestamp_seconds",
            "When the OAuth2 access token in use by a server expires (0: none yet).",
            ["server"], registry=r)
        self.bounces_refused = counter(
            "mailsync_bounces_refused",
            "Fetched messages naming a VERP address that were not taken as bounces, by "
            "reason (unsigned, bad_signature, not_a_bounce).", ["server", "reason"], registry=r)
        self.send_attempts = counter(
            "mailsync_send_attempts", "SMTP transactions and connection attempts, by result.",
            ["server", "result"], registry=r)
        self.send_duration = histogram(
            "mailsync_send_duration_seconds", "Time of one SMTP transaction.", ["server"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r)
        self.server_up = gauge(
            "mailsync_server_up", "1 when the last connection to the server worked.",
            ["server", "direction"], registry=r)
        self.pool_concurrency = gauge(
            "mailsync_pool_concurrency",
            "SMTP sessions mailsync may open now to an outgoing server: its max_connections, "
            "or fewer after the server refused one more (lowered on refusal, raised again "
            "by one at most every 10 s).", ["server"], registry=r)
        self.mailbox_polls = counter(
            "mailsync_mailbox_polls", "Mailbox polls, by result.", ["server", "result"],
            registry=r)
        self.mailbox_fetched = counter(
            "mailsync_mailbox_messages_fetched", "Messages fetched and stored.", ["server"],
            registry=r)
        self.mailbox_skipped = counter(
            "mailsync_mailbox_messages_skipped",
            "Messages not fetched and never tried again, by reason (too_large: declared over "
            "max_message_size; oversized_literal, oversized_retr: the server sent more).",
            ["server", "reason"], registry=r)
        self.mailbox_poll_interval = gauge(
            "mailsync_mailbox_poll_interval_seconds",
            "The configured poll_interval (IMAP IDLE also polls at least this often).",
            ["server"], registry=r)
        self.mailbox_last_success = gauge(
            "mailsync_mailbox_last_poll_success_timestamp_seconds",
            "Time of the last successful poll.", ["server"], registry=r)
        self.mailbox_lease_held = gauge(
            "mailsync_mailbox_lease_held",
            "1 when this node holds the lease of the incoming server (it alone polls it: "
            "always with SQLite; one node of those sharing a PostgreSQL store).", ["server"],
            registry=r)
        self.config_last_reload_successful = gauge(
            "mailsync_config_last_reload_successful", "1 when the last reload was applied.",
            registry=r)
        self.config_last_reload_success_timestamp = gauge(
            "mailsync_config_last_reload_success_timestamp_seconds",
            "Time the configuration in force was applied.", registry=r)
        self.config_reloads = counter(
            "mailsync_config_reloads", "Reload attempts, by result.", ["result"], registry=r)
        self.config_hash = gauge(
            "mailsync_config_hash", "First 52 bits of the SHA-256 of the config in force.",
            registry=r)
        self.outcome_commit_wait = histogram(
            "mailsync_outcome_commit_wait_seconds",
            "Time a sender waited for its previous message's outcome to be committed "
            "before sending the next message's content (SQLite's group commit; "
            "PostgreSQL's commit and WAL flush): when it is long, the store bounds the "
            "sending rate.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 1),
            registry=r)
        self.cluster_nodes = gauge(
            "mailsync_cluster_nodes",
            "Live nodes sharing this store (a heartbeat within their send_lease), this one "
            "included; 1 with SQLite (one node).", registry=r)
        self.cluster_config_drift = gauge(
            "mailsync_cluster_config_drift",
            "Configurations the live nodes sharing this store run, beyond one (0: every "
            "node runs the same config hash; always 0 with one node).", registry=r)
        self.build_info = info("mailsync_build", "mailsync version.", registry=r)
        self.build_info.info({"version": __version__})

    @property
    def served(self) -> bool:
        """Whether these series count (a process serving ``/metrics``)."""
        return self._registry is not None

    @property
    def registry(self) -> CollectorRegistry:
        """The registry every series is in (only a served one has it)."""
        if self._registry is None:
            raise AttributeError("these metrics are not served: they have no registry")
        return self._registry

    def oauth2_observer(self, name: str, result: str, expires_at: float | None) -> None:
        """A token cache's report of one request to a token endpoint (for ``name``)."""
        self.oauth2_refreshes.labels(name, "success" if result == "ok" else "failure").inc()
        if expires_at is not None:
            self.oauth2_expiry.labels(name).set(expires_at)

    def prime(self, config: Config) -> None:
        """Create every series the config makes known, at 0 (the node count at 1: this
        node, until a shared store's heartbeat counts the others)."""
        self.cluster_nodes.set(1)
        for reason in REJECT_REASONS:
            self.messages_rejected.labels(reason)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for server in config.sending_servers():
            self.messages_deferred.labels(server)
            self.send_duration.labels(server)
            self.server_up.labels(server, "outgoing")
            for result in ATTEMPT_RESULTS:
                self.send_attempts.labels(server, result)
        for account in config.accounts:
            self.messages_bounced.labels(account.name)
            for reason in SUPPRESSION_REASONS:
                self.recipients_suppressed.labels(account.name, reason)
            for reason in FAIL_REASONS:
                self.messages_failed.labels(account.name, reason)
            if account.server is not None:
                self.messages_sent.labels(account.name, account.server)
            elif account.own_login is not None:
                self.messages_sent.labels(account.name, account.own_login.name)
        oauth2 = [name for name, s in config.sending_servers().items() if s.auth is not None]
        oauth2 += [inc.name for inc in config.incoming_servers if inc.auth is not None]
        for name in oauth2:
            self.oauth2_expiry.labels(name)
            for result in OAUTH2_RESULTS:
                self.oauth2_refreshes.labels(name, result)
        for inc in config.incoming_servers:
            self.mailbox_poll_interval.labels(inc.name).set(inc.poll_interval.total_seconds())
            self.server_up.labels(inc.name, "incoming")
            self.mailbox_fetched.labels(inc.name)
            self.mailbox_lease_held.labels(inc.name)
            for result in ("success", "failure"):
                self.mailbox_polls.labels(inc.name, result)
            for reason in BOUNCE_REFUSED:
                self.bounces_refused.labels(inc.name, reason)
            for reason in SKIP_REASONS[inc.type]:
                self.mailbox_skipped.labels(inc.name, reason)
