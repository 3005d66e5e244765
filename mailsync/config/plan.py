"""What a new configuration changes, object by object: a pure diff of two configs.

Both configs are flattened into named objects (``accounts.sales`` → its attributes,
nested values with dotted names); the plan is the set difference of the names plus,
for names in both, the attributes whose values differ. Secrets compare by value but
are only ever shown as ``(changed)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from mailsync.config.model import Config
from mailsync.config.secrets import Secret
from mailsync.config.units import format_duration
from mailsync.values import fields, is_value, valueclass

SECTIONS = ("daemon", "alias_domain", "users", "outgoing_servers", "incoming_servers",
            "accounts", "activity_types")
# Lists of named objects beside the sections, planned alike (config/deliverability.py):
# a DKIM entry is named by its TXT record's name, a webhook by its name.
LISTS = ("dkim", "webhooks")
# Then the admin console's settings and each of its users (config/admin.py; a user's
# password hash is a secret: only ever "(changed)"), and the suppression list's expiry.
LAST = ("admin", "admin.users", "suppression")
SINGLETONS = ("daemon", "alias_domain", "admin", "suppression")

Attrs = dict[str, Any]
Flat = dict[tuple[str, str], Attrs]


@valueclass
class Change:
    """One attribute of an object that differs: ``old`` → ``new`` (None when absent)."""

    attr: str
    old: Any
    new: Any

    @property
    def secret(self) -> bool:
        return isinstance(self.old, Secret) or isinstance(self.new, Secret)

    def render(self) -> str:
        if self.secret:
            return f"{self.attr}: (changed)"
        if isinstance(self.old, tuple) and isinstance(self.new, tuple):
            added = [v for v in self.new if v not in self.old]
            removed = [v for v in self.old if v not in self.new]
            if added or removed:
                parts = [f"+{_show(v)}" for v in added] + [f"-{_show(v)}" for v in removed]
                return f"{self.attr}: {' '.join(parts)}"
        return f"{self.attr}: {_show(self.old)} -> {_show(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        if self.secret:
            return {"attr": self.attr, "secret": True, "changed": True}
        return {"attr": self.attr, "old": _json(self.old), "new": _json(self.new)}


@valueclass
class Action:
    """An object added (``+``), changed (``~``) or removed (``-``)."""

    op: Literal["+", "~", "-"]
    section: str
    name: str
    changes: tuple[Change, ...] = ()
    after: Attrs | None = None  # the whole new object, for adds

    @property
    def address(self) -> str:
        return self.section if self.section in SINGLETONS else f"{self.section}.{self.name}"

    def as_dict(self) -> dict[str, Any]:
        action = {"+": "add", "~": "change", "-": "remove"}[self.op]
        out: dict[str, Any] = {"action": action, "address": self.address,
                               "section": self.section, "name": self.name}
        if self.op == "~":
            out["changes"] = [c.as_dict() for c in self.changes]
        if self.op == "+" and self.after is not None:
            out["attributes"] = {k: ("(secret)" if isinstance(v, Secret) else _json(v))
                                 for k, v in self.after.items()}
        return out


@valueclass
class Plan:
    """The actions that turn one configuration into another, in file order."""

    actions: tuple[Action, ...]

    def count(self, op: str) -> int:
        return sum(1 for a in self.actions if a.op == op)

    @property
    def empty(self) -> bool:
        return not self.actions

    def summary(self) -> str:
        return "No changes." if self.empty else self._totals()

    def _totals(self) -> str:
        return (f"Plan: {self.count('+')} to add, {self.count('~')} to change, "
                f"{self.count('-')} to remove.")

    def lines(self) -> list[str]:
        """Each action (``+ address``), then each of its changes, indented."""
        lines = []
        for a in self.actions:
            lines.append(f"{a.op} {a.address}")
            lines.extend(f"    {c.render()}" for c in a.changes)
        return lines

    def render(self) -> str:
        """The plan as ``mailsync plan`` prints it: each action and its changes, then the
        ``Plan: N to add, N to change, N to remove.`` line, always the last (a script may
        read it; an empty plan says ``No changes.`` above it)."""
        lines = self.lines()
        lines.append("" if lines else "No changes.")
        lines.append(self._totals())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "actions": [a.as_dict() for a in self.actions],
            "add": self.count("+"),
            "change": self.count("~"),
            "remove": self.count("-"),
        }


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def _scalar(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return tuple(_scalar(v) for v in value)
    return value


def _attrs(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> Attrs:
    out: Attrs = {}
    for f in fields(obj):
        if f.name == "name" or not f.compare or f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue  # absent and None are the same: nothing set
        key = prefix + f.name
        if is_value(value) and not isinstance(value, (type, Secret)):
            out.update(_attrs(value, key + "."))
        else:
            out[key] = _scalar(value)
    return out


def flatten(config: Config) -> Flat:
    """Named objects of a config, in file order: ``(section, name)`` → attributes."""
    flat: Flat = {("daemon", ""): _attrs(config.daemon)}
    if config.alias_domain is not None:
        flat[("alias_domain", "")] = _attrs(config.alias_domain)
    for user in config.users:
        unix_users = config.unix_users(user)
        flat[("users", user)] = {"unix_users": unix_users} if unix_users else {}
    for section in SECTIONS[3:] + LISTS:
        for obj in getattr(config, section):
            flat[(section, obj.name)] = _attrs(obj)
    if config.admin is not None:
        flat[("admin", "")] = _attrs(config.admin, skip=("users",))
        for person in config.admin.users:
            flat[("admin.users", person.name)] = _attrs(person)
    flat[("suppression", "")] = _attrs(config.suppression)
    return flat


def diff_flat(old: Mapping[tuple[str, str], Attrs], new: Mapping[tuple[str, str], Attrs]) -> Plan:
    """The plan between two flattened configs (see :func:`flatten`)."""
    order = {s: i for i, s in enumerate(SECTIONS + LISTS + LAST)}
    actions: list[Action] = []
    keys = list(new) + [k for k in old if k not in new]
    keys.sort(key=lambda k: order.get(k[0], len(order)))  # stable: file order within a section
    for key in keys:
        section, name = key
        if key not in old:
            actions.append(Action("+", section, name, after=dict(new[key])))
        elif key not in new:
            actions.append(Action("-", section, name))
        else:
            a, b = old[key], new[key]
            changes = tuple(
                Change(attr, a.get(attr), b.get(attr))
                for attr in list(b) + [x for x in a if x not in b]
                if a.get(attr) != b.get(attr)
            )
            if changes:
                actions.append(Action("~", section, name, changes))
    return Plan(tuple(actions))


def diff(old: Config | None, new: Config) -> Plan:
    """The plan that turns ``old`` (None: nothing applied yet) into ``new``. Pure."""
    return diff_flat(flatten(old) if old is not None else {}, flatten(new))


def apply(flat: Mapping[tuple[str, str], Attrs], plan: Plan) -> Flat:
    """``flat`` with ``plan`` applied; ``apply(flatten(a), diff(a, b)) == flatten(b)``."""
    out: Flat = {k: dict(v) for k, v in flat.items()}
    for a in plan.actions:
        key = (a.section, a.name)
        if a.op == "+":
            out[key] = dict(a.after or {})
        elif a.op == "-":
            del out[key]
        else:
            for c in a.changes:
                if c.new is None:
                    out[key].pop(c.attr, None)
                else:
                    out[key][c.attr] = c.new
    return out
