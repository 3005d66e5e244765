"""systemd/: the unit verifies and is hardened (exposure <= 2.0); sysusers and tmpfiles
declare what the unit relies on, and really create it when applied to a scratch root."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, need
from tests.outbound_helpers import server_yaml, write_config
from tests.test_store_life import _fill

SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "mailsync.service"
SYSUSERS = SYSTEMD / "mailsync.sysusers"
TMPFILES = SYSTEMD / "mailsync.tmpfiles"
BACKUP_UNIT = SYSTEMD / "mailsync-backup.service"
BACKUP_TIMER = SYSTEMD / "mailsync-backup.timer"
SPOOL = "/var/spool/mailsync"
BACKUPS = "/var/backups/mailsync"
MAX_EXPOSURE = 2.0
# No colours, no pager, English output to parse.
ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}


def tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed (apt-get install systemd)")
    assert path is not None
    return path


def run(*args: str, stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    with open(stdin or os.devnull) as source:
        return subprocess.run(args, stdin=source, capture_output=True, text=True, env=ENV,
                              timeout=60, check=False)


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value, in order (keys such as SystemCallFilter= repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def config_lines(path: Path) -> list[list[str]]:
    """sysusers.d / tmpfiles.d lines, split into fields as systemd does (quotes kept whole)."""
    return [shlex.split(line) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with /usr/bin/mailsync replaced by a stub that exists.

    `systemd-analyze verify` checks that ExecStart=/ExecReload= binaries are executable, and
    /usr/bin/mailsync exists only once mailsync is installed as a package (a venv install
    puts it elsewhere, see the unit's comment). Everything else is verified as shipped.
    """
    stub = tmp_path / "bin" / "mailsync"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count("=/usr/bin/mailsync ") == 2  # ExecStart= and ExecReload=
    copy = tmp_path / "mailsync.service"  # verify needs the real unit name
    copy.write_text(text.replace("=/usr/bin/mailsync ", f"={stub} "))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = tool("systemd-analyze")
    copy = verifiable_copy(tmp_path)
    result = run(analyze, "verify", str(copy))
    # verify exits 0 even for unknown keys or bad values, which it only prints: require
    # silence.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    # And it does catch a mistake, so the silence above means something.
    typo = tmp_path / "typo" / "mailsync.service"
    typo.parent.mkdir()
    typo.write_text(copy.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    bad = run(analyze, "verify", str(typo))
    assert "Unknown key 'ProtectHom'" in bad.stderr


def test_unit_exposure_is_at_most_2():
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", str(UNIT))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for mailsync\.service: (\d+(?:\.\d+)?)",
                      result.stdout)
    assert match, result.stdout[-2000:]
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
    # The network is the point of a mail daemon: what it costs must be visible, not hidden.
    assert re.search(r"✗ PrivateNetwork=", result.stdout)


def test_unit_settings_the_daemon_relies_on():
    s = unit_settings(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"], "Service.NotifyAccess": ["main"],
        "Service.ExecStart": ["/usr/bin/mailsync run -c /etc/mailsync/config.yaml"],
        "Service.ExecReload": ["/usr/bin/mailsync reload -c /etc/mailsync/config.yaml"],
        "Service.User": ["mailsync"], "Service.Group": ["mailsync"],
        "Service.StateDirectory": ["mailsync"], "Service.ReadWritePaths": [SPOOL],
        "Service.Restart": ["on-failure"], "Service.WatchdogSec": ["30s"],
        "Service.TimeoutStopSec": ["60s"], "Service.KillMode": ["mixed"],
        "Service.UMask": ["0027"], "Service.ProtectSystem": ["strict"],
        "Service.CapabilityBoundingSet": [""], "Service.AmbientCapabilities": [""],
        "Service.RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "Service.SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    assert {key: s.get(key) for key in expected} == expected
    assert "smtp-password:/etc/mailsync/credentials/smtp-password" in s["Service.LoadCredential"]
    # Settings that would cut a mail daemon off from its servers.
    for key in ("PrivateNetwork", "IPAddressDeny", "IPAddressAllow"):
        assert f"Service.{key}" not in s


def test_sysusers_declares_the_user_and_the_submit_group():
    lines = config_lines(SYSUSERS)
    assert ["g", "mailsync-submit", "-"] in lines
    users = [line for line in lines if line[0] == "u"]
    assert users == [["u", "mailsync", "-", "mailsync mail daemon", "/var/lib/mailsync",
                      "/usr/sbin/nologin"]]
    # The unit runs as that user, with that group for the spool.
    s = unit_settings(UNIT.read_text())
    assert s["Service.User"] == ["mailsync"]
    assert s["Service.SupplementaryGroups"] == ["mailsync-submit"]


def test_tmpfiles_create_the_spool_with_its_modes():
    lines = config_lines(TMPFILES)
    assert {tuple(line) for line in lines} == {
        ("d", SPOOL, "0750", "mailsync", "mailsync-submit", "-"),
        ("d", f"{SPOOL}/tmp", "3770", "mailsync", "mailsync-submit", "-"),
        ("d", f"{SPOOL}/new", "3770", "mailsync", "mailsync-submit", "-"),
        ("d", f"{SPOOL}/rejected", "2750", "mailsync", "mailsync-submit", "-"),
        ("d", BACKUPS, "0750", "mailsync", "mailsync", "-"),
    }


def test_sysusers_and_tmpfiles_applied_to_a_scratch_root(tmp_path):
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    need(os.geteuid() == 0, "creating directories owned by other users needs root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # Read from stdin: with --root, a file argument would be looked up inside the root.
    done = run(sysusers, f"--root={root}", "-", stdin=SYSUSERS)
    assert done.returncode == 0, done.stderr
    passwd = {f[0]: f for f in (line.split(":") for line in
                                (root / "etc/passwd").read_text().splitlines())}
    group = {f[0]: f for f in (line.split(":") for line in
                               (root / "etc/group").read_text().splitlines())}
    assert passwd["mailsync"][5:] == ["/var/lib/mailsync", "/usr/sbin/nologin"]
    assert passwd["mailsync"][3] == group["mailsync"][2]  # its own primary group
    uid, submit_gid = int(passwd["mailsync"][2]), int(group["mailsync-submit"][2])

    # tmpfiles resolves mailsync and mailsync-submit in the scratch root's /etc.
    done = run(tmpfiles, f"--root={root}", "--create", "-", stdin=TMPFILES)
    assert done.returncode == 0, done.stderr
    modes = {}
    for sub in ("", "/tmp", "/new", "/rejected"):
        st = (root / SPOOL.lstrip("/")).joinpath(sub.lstrip("/")).stat()
        assert (st.st_uid, st.st_gid) == (uid, submit_gid)
        assert stat.S_ISDIR(st.st_mode)
        modes[sub] = stat.S_IMODE(st.st_mode)
    assert modes == {"": 0o750, "/tmp": 0o3770, "/new": 0o3770, "/rejected": 0o2750}


def test_backup_units_pass_systemd_analyze_verify():
    analyze = tool("systemd-analyze")
    # As shipped: the binaries verify checks are /bin/sh and find (mailsync is sh's
    # argument).
    result = run(analyze, "verify", str(BACKUP_UNIT), str(BACKUP_TIMER))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    timer = unit_settings(BACKUP_TIMER.read_text())
    assert timer["Timer.OnCalendar"] == ["daily"] and timer["Timer.Persistent"] == ["yes"]


def test_backup_unit_is_hardened_and_has_no_network():
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", str(BACKUP_UNIT))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for mailsync-backup\.service: "
                      r"(\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) <= 1.0, result.stdout
    s = unit_settings(BACKUP_UNIT.read_text())
    assert s["Service.PrivateNetwork"] == ["yes"] and s["Service.User"] == ["mailsync"]
    assert s["Service.ReadWritePaths"] == [BACKUPS]


def _as_run(command: str, replace: dict[str, str]) -> list[str]:
    """A unit's command line as systemd runs it (each %% a %), its paths replaced."""
    for old, new in replace.items():
        command = command.replace(old, new)
    return shlex.split(command.replace("%%", "%"))


def test_the_backup_units_commands_back_up_the_store_and_keep_14_days(tmp_path):
    """The unit's own ExecStart= and ExecStartPost= lines, run on a real store."""
    cfg = write_config(tmp_path, server_yaml("main", 9))
    _fill(tmp_path / "state", 5)
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / "mailsync-20250101T000000Z.db"
    old.write_bytes(b"an old backup")
    os.utime(old, (time.time() - 15 * 86400,) * 2)
    recent = backups / "mailsync-20251231T000000Z.db"
    recent.write_bytes(b"a recent backup")
    os.utime(recent, (time.time() - 12 * 86400,) * 2)
    mine = tmp_path / "mailsync"  # /usr/bin/mailsync: this checkout's, as a script
    mine.write_text(f"#!/bin/sh\nexec {sys.executable} -m mailsync \"$@\"\n")
    mine.chmod(0o755)
    replace = {"/usr/bin/mailsync ": f"{mine} ", "/etc/mailsync/config.yaml": str(cfg),
               BACKUPS: str(backups)}
    s = unit_settings(BACKUP_UNIT.read_text())
    for line in (*s["Service.ExecStart"], *s["Service.ExecStartPost"]):
        done = subprocess.run(_as_run(line, replace), capture_output=True, text=True,
                              timeout=60, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in backups.iterdir())
    assert len(made) == 2 and recent.name in made and old.name not in made
    (new,) = set(made) - {recent.name}
    assert re.fullmatch(r"mailsync-\d{8}T\d{6}Z\.db", new)
    assert stat.S_IMODE((backups / new).stat().st_mode) == 0o640
    check = subprocess.run([str(mine), "store", "check", "--db", str(backups / new)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert (check.returncode, check.stdout) == (0, "ok\n")
