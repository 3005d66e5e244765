"""The shipped pre-commit hook matches mailsync config files only (pre-commit applies
`files:` with re.search to each path relative to the repository's top)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT

(HOOK,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
FILES = re.compile(HOOK["files"])


@pytest.mark.parametrize("path", [
    "config.yaml", "config.yml", "mailsync.yaml", "mailsync.yml", "mailsync-prod.yaml",
    "deploy/mailsync.yaml", "etc/mailsync/mailsync.yml", "ops/mailsync.staging.yaml",
])
def test_mailsync_config_files_are_checked(path):
    assert FILES.search(path)


@pytest.mark.parametrize("path", [
    ".circleci/config.yml", ".github/workflows/ci.yml", ".gitlab-ci.yml", "app/config.yaml",
    "docker-compose.yml", ".pre-commit-config.yaml", "config.yaml.bak", "myconfig.yaml",
    "deploy/config.yml", "mailsync/settings.json", "kustomization.yaml",
])
def test_other_files_are_not(path):
    assert not FILES.search(path)


def test_the_hook_runs_mailsync_validate_on_yaml_files():
    assert HOOK["id"] == "mailsync-validate" and HOOK["entry"] == "mailsync validate"
    assert HOOK["types"] == ["yaml"] and HOOK["language"] == "python"
