"""Secret references: kept as references in the model, resolved only when used.

``repr`` and ``str`` never show a value; resolution errors name the reference, never
the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from mailsync.errors import SecretError
from mailsync.values import field, valueclass

SecretKind = Literal["env", "file", "credential", "plain"]


@valueclass
class Secret:
    """Where a secret comes from: ``{env: NAME}``, ``{file: PATH}``, ``{credential: NAME}``,
    or (discouraged) the plain value itself."""

    kind: SecretKind
    ref: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def describe(self) -> str:
        """A safe description: the reference, never the value."""
        if self.kind == "plain":
            return "(plain text in the config)"
        return f"{{{self.kind}: {self.ref}}}"

    def resolve(
        self,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> str:
        """The secret's value. Raises SecretError naming the reference when it is missing."""
        env = os.environ if environ is None else environ
        if self.kind == "plain":
            return self.ref
        if self.kind == "env":
            if self.ref not in env:
                raise SecretError(f"environment variable {self.ref} is not set")
            return env[self.ref]
        if self.kind == "file":
            path = Path(self.ref)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            return _read(path, f"secret file {path}")
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"credential {self.ref}: $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or set it)"
            )
        return _read(Path(directory) / self.ref, f"credential {self.ref}")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        raise SecretError(f"{what} does not exist") from None
    except OSError as exc:
        raise SecretError(f"{what} cannot be read: {exc.strerror}") from None


def from_config(value: str | Mapping[str, str]) -> Secret:
    """Build a Secret from its config form (already schema-validated)."""
    if isinstance(value, str):
        return Secret("plain", value)
    ((kind, ref),) = value.items()
    assert kind in ("env", "file", "credential")
    return Secret(kind, ref)  # type: ignore[arg-type]
