from __future__ import annotations

from mailsync.cli import main
from tests.conftest import EXAMPLE


def test_example_config_is_valid_and_warning_free(runner):
    result = runner.invoke(main, ["validate", "-c", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "0 errors, 0 warnings"
