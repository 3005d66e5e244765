"""The monitoring kit (monitoring/, docs/monitoring.md): promtool checks and unit tests of
the alerts, PromQL that names only series the daemon exports, and a real Prometheus
scraping a real `mailsync run` that sends through a real SMTP server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mailsync.activities.store import ActivityCollector
from mailsync.cli import main
from mailsync.config.load import load_file
from mailsync.daemon.collectors import QueueCollector, StoreCollector
from mailsync.daemon.deliverability import DeliverabilityCollector
from mailsync.daemon.webhooks import WebhookCollector
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import drop, ensure_dirs
from mailsync.store import Store
from mailsync.telemetry.exporter import start_exporter
from mailsync.telemetry.metrics import Metrics
from tests.conftest import EXAMPLE, ROOT, need
from tests.outbound_helpers import server_yaml
from tests.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.test_webhooks import Receiver

MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "mailsync.json"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
DOC = ROOT / "docs" / "monitoring.md"

# Series Prometheus itself adds for every target; the only non-mailsync name allowed.
PROMETHEUS_OWN = frozenset({"up"})

# No proxy from the environment may get between the tests and 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which("promtool") is not None, "promtool (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=MONITORING)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    assert group["name"] == "mailsync"
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel but rows (also those nested in collapsed rows)."""
    out = []
    for p in dashboard()["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def variable_queries() -> dict[str, str]:
    """Template variable name → its query text (query variables only)."""
    out = {}
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out[v["name"]] = q["query"] if isinstance(q, dict) else q
    return out


# -- PromQL metric names -----------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])      # Grafana: $x, ${x:fmt}, [[x]]
  | (?P<number>[0-9][0-9a-zA-Z_.]*|\.[0-9][0-9a-zA-Z_.]*)  # 0.5, 1e3, 0x1f, 15m, 1h30m
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

# Words that are PromQL syntax, not series names.
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "atan2", "inf", "nan"})
# Aggregation operators may be followed by their by/without clause instead of "(".
_AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                           "count_values", "bottomk", "topk", "quantile"})
# Keywords followed by a parenthesised list of label names.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (Grafana variables allowed in it).

    Skipped: strings, numbers and durations, label names inside ``{...}`` and inside the
    label lists of by/without/on/ignoring/group_left/group_right, function and
    aggregation names (an identifier followed by ``(``, or an aggregation by its
    by/without clause), and keywords.
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)
              if m.lastgroup != "space"]
    names: set[str] = set()
    braces = 0
    label_list = False
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "other":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
            elif text == ")" and label_list:
                label_list = False
            continue
        if kind != "ident" or braces or label_list:
            continue
        word = text.lower()
        if word in _LABEL_LISTS:
            label_list = nxt == "("
            continue
        if word in _KEYWORDS or nxt == "(":
            continue
        if word in _AGGREGATIONS and nxt.lower() in ("by", "without"):
            continue
        names.add(text)
    return names


def label_values_metric(query: str) -> str:
    """The series of a Grafana ``label_values(SERIES, label)`` variable query."""
    m = re.fullmatch(r"\s*label_values\((?P<series>.+),\s*(?P<label>\w+)\s*\)\s*", query)
    assert m, f"not a label_values(SERIES, label) query: {query}"
    return m["series"]


def unknown_names(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    """Expression → the names in it that are neither exported nor Prometheus's own."""
    out = {}
    for expr in exprs:
        bad = metric_names(expr) - known - PROMETHEUS_OWN
        if bad:
            out[expr] = bad
    return out


def names_of_families(body: str) -> set[str]:
    """Every series name an exposition can contain: the samples present, and what each
    declared family yields by its type (a histogram nobody observed yet still has a
    _bucket series to come)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("", "_count", "_sum", "_created")}
    names: set[str] = set()
    for family in text_string_to_metric_families(body):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Series names of a real GET /metrics: the example config's primed Metrics, with the
    queue and activity collectors registered the way the daemon registers them."""
    loaded = load_file(EXAMPLE)
    assert loaded.config is not None, loaded.problems
    store = Store.open(tmp_path_factory.mktemp("state"))
    try:
        metrics = Metrics()
        metrics.prime(loaded.config)
        metrics.registry.register(QueueCollector(lambda: OutboundStore(store)))
        metrics.registry.register(ActivityCollector(lambda: store, loaded.config))
        metrics.registry.register(StoreCollector(lambda: store.health))
        metrics.registry.register(DeliverabilityCollector(lambda: store,
                                                          lambda: loaded.config))
        metrics.registry.register(WebhookCollector(lambda: None))
        with (start_exporter("127.0.0.1:0", metrics.registry, lambda: (True, "ok")) as exp,
              OPENER.open(f"{exp.url}/metrics", timeout=10) as response):
            assert response.status == 200
            body = response.read().decode()
    finally:
        store.close()
    return names_of_families(body)


def test_the_scrape_has_every_family_the_kit_relies_on(exported):
    assert {"mailsync_messages_sent_total", "mailsync_messages_failed_total",
            "mailsync_messages_bounced_total", "mailsync_send_duration_seconds_bucket",
            "mailsync_queue_messages", "mailsync_queue_oldest_message_age_seconds",
            "mailsync_server_up", "mailsync_mailbox_last_poll_success_timestamp_seconds",
            "mailsync_activities_open", "mailsync_activities_overdue",
            "mailsync_build_info", "mailsync_config_hash", "mailsync_store_errors_total",
            "mailsync_store_commit_failing", "mailsync_spool_duplicates_total",
            "mailsync_spool_intake_failing",
            "mailsync_outcome_commit_wait_seconds_bucket", "mailsync_cluster_nodes",
            "mailsync_cluster_config_drift"} <= exported
    assert not {"mailsync_messages_sent", "mailsync_build", "mailsync_queue_messages_total",
                "mailsync_send_duration_seconds"} & exported


def test_the_name_checker_flags_made_up_names_and_only_them(exported):
    good = ('sum by (server, le) (rate(mailsync_send_duration_seconds_bucket'
            '{server=~"$server", instance=~"${instance:regex}"}[$__rate_interval]))'
            ' > bool 0.5 unless on (job, instance) up{job="mailsync"} == 0'
            ' or label_replace(mailsync_server_up offset 5m, "s", "$1", "server", "(.*)")'
            ' and ignoring(direction) group_left(version) mailsync_build_info'
            ' / 1e3 + time() - [[x]]')
    assert metric_names(good) == {"mailsync_send_duration_seconds_bucket", "up",
                                  "mailsync_server_up", "mailsync_build_info"}
    assert unknown_names([good], exported) == {}
    bad = ['sum(rate(mailsync_messages_send_total[5m]))',              # typo
           'mailsync_queue_depth{status="queued"} > 100',              # never existed
           'histogram_quantile(0.9, rate(mailsync_send_duration_seconds[5m]))',  # no _bucket
           'rate(mailsync_messages_sent_total[5m]) / rate(node_cpu_seconds_total[5m])',
           'sum without (server) (mailsync_build)']
    assert unknown_names(bad, exported) == {
        bad[0]: {"mailsync_messages_send_total"}, bad[1]: {"mailsync_queue_depth"},
        bad[2]: {"mailsync_send_duration_seconds"}, bad[3]: {"node_cpu_seconds_total"},
        bad[4]: {"mailsync_build"}}


def test_alerts_and_dashboard_name_only_exported_series(exported):
    exprs = ([r["expr"] for r in alert_rules()] + dashboard_exprs()
             + [label_values_metric(q) for q in variable_queries().values()])
    for expr in exprs:
        assert metric_names(expr), f"no series found in {expr!r}: tokenizer broken?"
    assert unknown_names(exprs, exported) == {}


# -- Alert rules ---------------------------------------------------------------------------
def test_promtool_checks_the_rules_and_the_example_prometheus_config():
    rules = promtool("check", "rules", ALERTS.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    config = promtool("check", "config", PROMETHEUS_YML.name)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout


def test_promtool_unit_tests_of_the_alerts_pass():
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_in_a_unit_test_and_has_severity_and_runbook():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired = {case["alertname"] for group in tests["tests"]
             for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {case["alertname"] for group in tests["tests"]
             for case in group.get("alert_rule_test", []) if not case.get("exp_alerts")}
    assert fired == set(names)
    assert quiet == set(names), "each alert also needs a case where it stays quiet"
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
    scraped = [r for r in rules if "up" in metric_names(r["expr"])]
    assert {r["alert"] for r in scraped} == {"MailsyncMetricsAbsent", "MailsyncDown"}
    assert all('job="mailsync"' in r["expr"] for r in scraped)


def runbook_commands() -> list[list[str]]:
    """Each `mailsync ...` command quoted in a runbook, label templates filled in."""
    commands = []
    for rule in alert_rules():
        text = re.sub(r"\{\{.*?\}\}", "x", rule["annotations"]["runbook"])
        for quoted in re.findall(r"`([^`]*)`", text):
            if quoted.startswith("mailsync "):
                commands.append(shlex.split(quoted)[1:])
    return commands


def test_runbooks_quote_real_mailsync_commands_and_options():
    commands = runbook_commands()
    assert {c[0] for c in commands} >= {"history", "test", "validate", "queue", "inbox",
                                        "activity", "plan"}
    for args in commands:
        # --help is eager: parsing still refuses an unknown command or option first.
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, f"mailsync {shlex.join(args)}: {result.output}"


# -- Dashboard -----------------------------------------------------------------------------
def test_dashboard_model():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] == "mailsync"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = variable_queries()
    assert label_values_metric(queries["server"]).startswith("mailsync_server_up")
    assert queries["server"].rstrip(")").endswith("server")
    assert queries["account"].rstrip(")").endswith("account")
    panels = dashboard_panels()
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels
                                               if p not in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    # A 24-column grid without overlaps.
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
    every = "\n".join(dashboard_exprs())
    for series in ("mailsync_messages_sent_total", "mailsync_messages_failed_total",
                   "mailsync_messages_bounced_total", "mailsync_send_duration_seconds_bucket",
                   "mailsync_queue_messages", "mailsync_queue_oldest_message_age_seconds",
                   "mailsync_server_up", "mailsync_mailbox_polls_total",
                   "mailsync_mailbox_messages_fetched_total",
                   "mailsync_config_last_reload_successful", "mailsync_config_hash",
                   "mailsync_activities_open", "mailsync_activities_overdue",
                   "mailsync_build_info", "mailsync_rate_limit_waiting",
                   "mailsync_suppression_list_size", "mailsync_recipients_suppressed_total",
                   "mailsync_webhook_outbox_oldest_age_seconds",
                   "mailsync_webhook_deliveries_total", "mailsync_mailbox_lease_held",
                   "mailsync_outcome_commit_wait_seconds_bucket", "mailsync_cluster_nodes",
                   "mailsync_cluster_config_drift"):
        assert series in every, f"no panel shows {series}"
    assert "histogram_quantile(" in every


def test_the_docs_describe_every_panel_and_every_alert():
    doc = DOC.read_text()
    for p in dashboard_panels():
        assert f"**{p['title']}**" in doc, f"docs/monitoring.md: panel {p['title']!r}"
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in doc, f"docs/monitoring.md: alert {rule['alert']}"
    readme = (ROOT / "README.md").read_text()
    assert "## Monitoring" in readme and "docs/monitoring.md" in readme


# -- End to end: Prometheus scraping `mailsync run` ----------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with OPENER.open(url, timeout=5) as response:
        return json.loads(response.read())


def wait_until(what: str, check: Callable[[], Any], timeout: float,
               alive: Callable[[], str | None] = lambda: None) -> Any:
    """Poll ``check`` until it returns something true; ``alive`` names a dead process."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        dead = alive()
        if dead:
            pytest.fail(f"waiting for {what}: {dead}")
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def grafana_regex(*values: str) -> str:
    """A multi-value variable as Grafana writes it into a Prometheus query."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, values: dict[str, str]) -> str:
    """Fill in Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) as Grafana would."""
    def one(m: re.Match[str]) -> str:
        name = m["a"] or m["b"] or m["c"]
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]
    return re.sub(r"\$\{(?P<a>\w+)(?::\w+)?\}|\$(?P<b>\w+)|\[\[(?P<c>\w+)\]\]", one, expr)


def daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mailsync", "run", "-c", str(config)]


class Process:
    """A child process whose output goes to a file; stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.log = log
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                         env=env)

    def dead(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"{self.name} exited with {self.proc.returncode}:\n{self.output()}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in reversed(started):
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


MESSAGES = 5

TYPES = """\
activity_types:
  - name: Reply
    action: email
    default_user: alice
    delay: {count: 1, unit: days}
"""


# Limits no burst here reaches, and a webhook: the deliverability panels have series.
LIMITS = "    rate_limits: [{messages: 100000, per: 1m}]\n"


def e2e_config(tmp_path: Path, smtp_port: int, metrics_port: int, hook_port: int) -> Path:
    maildir = tmp_path / "drop"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1700000000.a.host").write_bytes(
        b"From: ann@example.org\r\nTo: support@example.com\r\nSubject: Quote?\r\n"
        b"Message-ID: <q1@example.org>\r\n\r\nHow much?\r\n")
    text = (f"version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            f"  metrics_listen: 127.0.0.1:{metrics_port}\n"
            f"alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}\n"
            f"users: [alice, bob]\n"
            f"outgoing_servers:\n{server_yaml('main', smtp_port, extra=LIMITS)}"
            f"incoming_servers:\n  - name: drop-folder\n    type: local\n    path: ./drop\n"
            f"    poll_interval: 1s\n    activity: {{type: Reply, user: alice}}\n"
            f"accounts:\n  - name: sales\n    email: sales@example.com\n    server: main\n"
            f"    granted_to: [alice]\n{LIMITS}{TYPES}"
            f"webhooks:\n  - name: crm\n    url: http://127.0.0.1:{hook_port}/hooks\n"
            f"    secret: {WEBHOOK_SECRET}\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    ensure_dirs(tmp_path / "spool")
    return path


@pytest.mark.slow
def test_prometheus_scrapes_the_daemon_and_every_dashboard_query_answers(
        tmp_path, smtp_server, processes):
    need(shutil.which("prometheus") is not None, "prometheus (apt-get install prometheus)")
    srv = smtp_server()
    metrics_port, prom_port = free_port(), free_port()
    hook_port = free_port()
    hook = Receiver(hook_port).start()  # verifies each request's signature
    cfg = e2e_config(tmp_path, srv.port, metrics_port, hook_port)
    daemon = Process("mailsync run", daemon_command(cfg), tmp_path / "daemon.log", tmp_path)
    processes.append(daemon)
    metrics_url = f"http://127.0.0.1:{metrics_port}"

    def healthz() -> bool:
        with OPENER.open(f"{metrics_url}/healthz", timeout=2) as response:
            return bool(response.status == 200)

    wait_until("the daemon's /healthz", healthz, 10, daemon.dead)

    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "mailsync",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    prom = Process("prometheus", [
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log", tmp_path)
    processes.append(prom)
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        answer = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(expr: str) -> float | None:
        result = query(expr)
        return float(result[0]["value"][1]) if result else None

    def both_alive() -> str | None:
        return daemon.dead() or prom.dead()

    wait_until("Prometheus to scrape the daemon",
               lambda: value('up{job="mailsync"}') == 1, 10, both_alive)

    for n in range(MESSAGES):
        drop(tmp_path / "spool", user="alice", to=[f"client{n}@example.org"],
             subject=f"Offer {n}", text="Hello")
    wait_until(f"sum(mailsync_messages_sent_total) == {MESSAGES}",
               lambda: value("sum(mailsync_messages_sent_total)") == MESSAGES, 15, both_alive)
    assert len(srv.wait_for(MESSAGES)) == MESSAGES
    # The local Maildir's message was fetched and scheduled its Reply activity.
    wait_until("the fetched message and its activity",
               lambda: (value("sum(mailsync_mailbox_messages_fetched_total)") == 1
                        and value('sum(mailsync_activities_open{type="Reply"})') == 1),
               10, both_alive)
    # The histogram appears with the first send: rate() needs a second scrape of it.
    wait_until("two scrapes of the send-latency and commit-wait histograms",
               lambda: (value("sum(mailsync_send_duration_seconds_count)") == MESSAGES
                        and value("sum(mailsync_outcome_commit_wait_seconds_count)")
                        == MESSAGES
                        and (value("min(count_over_time("
                                   "mailsync_send_duration_seconds_count[1m]))") or 0) >= 2),
               5, both_alive)
    assert value("mailsync_cluster_nodes") == 1

    assert value('mailsync_server_up{server="main", direction="outgoing"}') == 1
    # Every message's "sent" event reached the webhook; nothing waits for a rate limit.
    wait_until("the webhook's sent events", lambda: len(hook.ids("sent")) == MESSAGES, 10,
               both_alive)
    assert hook.bad == []  # every request was signed with the webhook's secret
    wait_until("an empty webhook outbox",
               lambda: value('mailsync_webhook_outbox_events{webhook="crm"}') == 0, 10,
               both_alive)
    assert value('sum(mailsync_rate_limit_waiting{server="main"})') == 0
    assert value("mailsync_config_last_reload_successful") == 1
    sha = hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert value("mailsync_config_hash") == int(sha[:13], 16)

    values = {"instance": grafana_regex(f"127.0.0.1:{metrics_port}"),
              "server": grafana_regex("main", "drop-folder"),
              "account": grafana_regex("sales"),
              "datasource": "prometheus",
              "__rate_interval": "1m", "__interval": "1s", "__range": "5m"}
    empty = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = substitute(target["expr"], values)
            if not query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)
    for name, q in variable_queries().items():
        series = substitute(label_values_metric(q), values)
        assert query(series), f"variable {name}: {series} selects nothing"

    # Every alert rule is loaded and evaluates cleanly; a healthy daemon raises none.
    def rules_ok() -> list[dict[str, Any]] | None:
        groups = get_json(f"{api}/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_until("every rule evaluated", rules_ok, 10, both_alive)
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
    assert [g["name"] for g in get_json(f"{api}/rules")["data"]["groups"]] == ["mailsync"]
    wait_until("no alert pending or firing",
               lambda: get_json(f"{api}/alerts")["data"]["alerts"] == [], 10, both_alive)

    assert daemon.stop() == 0, daemon.output()
    assert prom.stop() == 0, prom.output()
    hook.stop()
