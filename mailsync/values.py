"""Value classes without generated code: ``@valueclass`` for what ``@dataclass`` did.

``dataclasses.dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``,
``__hash__`` and, when frozen, ``__setattr__``/``__delattr__`` as source text and
compiles it: ~0.4 ms a class, paid by every process at import. The one-shot commands
import some sixty of them (the config tree, the store, the pollers): ~20 ms of a
100 ms ``inbox poll``. ``@valueclass`` gives the same classes (fields from the annotations,
defaults and ``dataclasses.field(default=…, default_factory=…, repr=…, compare=…,
init=…)``, ``__post_init__``, frozen instances raising ``FrozenInstanceError``,
equality and hashing over the compared fields, ``order``, ``__match_args__``) with
methods shared by every class, so defining one costs microseconds; only ``__init__`` is
compiled, for a class that makes many instances (:data:`COMPILE_AFTER`). Type checkers see a
dataclass (``typing.dataclass_transform``). ``fields``, ``replace`` and ``asdict``
stand in for their ``dataclasses`` namesakes, on both kinds of class.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["Field", "FrozenInstanceError", "asdict", "field", "fields", "replace", "valueclass"]

Field = dataclasses.Field
FrozenInstanceError = dataclasses.FrozenInstanceError
_MISSING: Any = dataclasses.MISSING

T = TypeVar("T", bound=type)
V = TypeVar("V")


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | Any = _MISSING,
          init: bool = True, repr: bool = True, compare: bool = True) -> Any:  # noqa: A002
    """A field's options, as ``dataclasses.field`` (whose ``Field`` it returns): a
    ``default`` or a ``default_factory``, and whether it is an ``__init__`` argument,
    shown by ``repr`` and compared (and hashed)."""
    return dataclasses.field(default=default, default_factory=default_factory, init=init,
                             repr=repr, compare=compare)


class Spec:
    """One field of a value class (what ``fields`` returns): ``name``, ``default``,
    ``default_factory`` (``dataclasses.MISSING`` when absent), ``init``, ``repr``,
    ``compare``."""

    __slots__ = ("name", "default", "default_factory", "init", "repr", "compare")

    def __init__(self, name: str, default: Any = _MISSING, default_factory: Any = _MISSING,
                 init: bool = True, repr: bool = True, compare: bool = True) -> None:  # noqa: A002
        self.name = name
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Spec({self.name!r})"


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return getattr(annotation, "__origin__", None) is __import__("typing").ClassVar


def _collect(cls: type) -> tuple[Spec, ...]:
    specs: dict[str, Spec] = {}
    for base in reversed(cls.__mro__[1:]):
        for spec in getattr(base, "__value_fields__", ()):
            specs[spec.name] = spec
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        default = cls.__dict__.get(name, _MISSING)
        if isinstance(default, Field):
            spec = Spec(name, default.default, default.default_factory, default.init,
                        default.repr, bool(default.compare))
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        else:
            spec = Spec(name, default)
        specs[name] = spec
    seen_default = False
    for spec in specs.values():
        if not spec.init:
            continue
        has_default = spec.default is not _MISSING or spec.default_factory is not _MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__qualname__}: non-default argument {spec.name!r} "
                            "follows default argument")
        seen_default = seen_default or has_default
    return tuple(specs.values())


# A class's own __init__ is compiled (as dataclasses write it: as fast as theirs to call)
# once it has made this many instances; until then a shared one binds the arguments. A
# class made a few times per process (the config tree: a one-shot command makes each
# node once) never pays the ~80 us of compiling it; one made per message soon stops
# paying the shared one's ~1 us more per call.
COMPILE_AFTER = 32


def _lazy_init(cls: type) -> Callable[..., None]:
    """The shared ``__init__`` of ``cls``, which hands over to the compiled one after
    :data:`COMPILE_AFTER` instances."""
    made = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += 1
        if made > COMPILE_AFTER:
            if cls.__dict__.get("__init__") is __init__:
                cls.__init__ = _compile_init(cls)  # type: ignore[misc]
            cls.__dict__["__init__"](self, *args, **kwargs)
            return
        _bind(cls, self, args, kwargs)
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _bind(cls: type, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """What the compiled ``__init__`` does, for any class: the arguments bound to the
    fields (TypeError as Python words it for a wrong call), defaults and factories for
    the others, then ``__post_init__``."""
    specs: tuple[Spec, ...] = cls.__value_fields__  # type: ignore[attr-defined]
    names: tuple[str, ...] = cls.__value_init__  # type: ignore[attr-defined]
    where = f"{cls.__qualname__}.__init__()"
    if len(args) > len(names):
        raise TypeError(f"{where} takes {len(names) + 1} positional arguments but "
                        f"{len(args) + 1} were given")
    given = dict(zip(names, args, strict=False))  # fewer arguments than fields: the rest
    for key in kwargs:
        if key not in names:
            raise TypeError(f"{where} got an unexpected keyword argument {key!r}")
        if key in given:
            raise TypeError(f"{where} got multiple values for argument {key!r}")
    given.update(kwargs)
    missing = [s.name for s in specs if s.init and s.name not in given
               and s.default is _MISSING and s.default_factory is _MISSING]
    if missing:
        raise TypeError(f"{where} missing {len(missing)} required argument"
                        f"{'s' if len(missing) > 1 else ''}: "
                        + ", ".join(repr(m) for m in missing))
    # As the compiled one: a frozen class's fields set past its __setattr__, another's
    # through it.
    assign = object.__setattr__ if getattr(cls, "__value_frozen__", None) is not None \
        else setattr
    for spec in specs:
        if spec.init and spec.name in given:
            item = given[spec.name]
        elif spec.default_factory is not _MISSING:
            item = spec.default_factory()
        elif spec.default is not _MISSING:
            item = spec.default
        else:
            continue  # init=False and no default: left unset, as dataclasses do
        assign(obj, spec.name, item)
    if hasattr(cls, "__post_init__"):
        obj.__post_init__()


_HAS_FACTORY = object()


def _compile_init(cls: type) -> Callable[..., None]:
    specs: tuple[Spec, ...] = cls.__value_fields__  # type: ignore[attr-defined]
    frozen = getattr(cls, "__value_frozen__", None) is not None
    env: dict[str, Any] = {"__set": object.__setattr__, "__has_factory": _HAS_FACTORY}
    params, body = [], []
    for i, spec in enumerate(specs):
        arg = spec.name
        if spec.default_factory is not _MISSING:
            env[f"__factory{i}"] = spec.default_factory
            if spec.init:
                params.append(f"{arg}=__has_factory")
                item = f"__factory{i}() if {arg} is __has_factory else {arg}"
            else:
                item = f"__factory{i}()"
        elif spec.init:
            if spec.default is not _MISSING:
                env[f"__default{i}"] = spec.default
                params.append(f"{arg}=__default{i}")
            else:
                params.append(arg)
            item = arg
        elif spec.default is not _MISSING:
            env[f"__default{i}"] = spec.default
            item = f"__default{i}"
        else:
            continue  # init=False and no default: left unset, as dataclasses do
        body.append(f"  __set(self, {arg!r}, {item})" if frozen else f"  self.{arg} = {item}")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    source = (f"def __init__(self, {', '.join(params)}):\n" if params
              else "def __init__(self):\n") + ("\n".join(body) or "  pass") + "\n"
    namespace: dict[str, Any] = {}
    exec(source, env, namespace)  # noqa: S102 - our own field names, as dataclasses do
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _repr(self: Any) -> str:
    cls = type(self)
    inner = ", ".join(f"{s.name}={getattr(self, s.name)!r}"
                      for s in cls.__value_fields__ if s.repr)
    return f"{cls.__qualname__}({inner})"


def _key(self: Any) -> tuple[Any, ...]:
    return type(self).__value_key__(self)  # type: ignore[no-any-return]


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return _key(self) == _key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(_key(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    cls = type(self)
    if cls.__value_frozen__ is cls or name in cls.__value_names__:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: Any, name: str) -> None:
    cls = type(self)
    if cls.__value_frozen__ is cls or name in cls.__value_names__:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


def _order(op: Callable[[tuple[Any, ...], tuple[Any, ...]], bool]) -> Callable[[Any, Any], Any]:
    def compare(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return op(_key(self), _key(other))
        return NotImplemented
    return compare


_ORDER = {"__lt__": _order(lambda a, b: a < b), "__le__": _order(lambda a, b: a <= b),
          "__gt__": _order(lambda a, b: a > b), "__ge__": _order(lambda a, b: a >= b)}


def _process(cls: T, frozen: bool, eq: bool, order: bool) -> T:
    specs = _collect(cls)
    own = cls.__dict__
    names = tuple(s.name for s in specs if s.init)
    attrs: dict[str, Any] = {
        "__value_fields__": specs, "__value_init__": names,
        "__value_names__": frozenset(s.name for s in specs),
        "__match_args__": names,
    }
    compared = [s.name for s in specs if s.compare]
    getter = operator.attrgetter(*compared) if compared else (lambda obj: ())
    attrs["__value_key__"] = staticmethod(getter if len(compared) != 1
                                          else lambda obj: (getter(obj),))
    if "__init__" not in own:
        attrs["__init__"] = _lazy_init(cls)
    if "__repr__" not in own:
        attrs["__repr__"] = _repr
    if eq and "__eq__" not in own:
        attrs["__eq__"] = _eq
    # As dataclasses: a __hash__ written in the class stays; Python's implicit
    # __hash__ = None beside a written __eq__ does not count as written.
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    if eq and not explicit_hash:
        attrs["__hash__"] = _hash if frozen else None
    if order:
        attrs.update({k: v for k, v in _ORDER.items() if k not in own})
    if frozen:
        attrs["__value_frozen__"] = cls
        attrs["__setattr__"] = _frozen_setattr
        attrs["__delattr__"] = _frozen_delattr
    for key, attr in attrs.items():
        setattr(cls, key, attr)
    return cls


@overload
def valueclass(cls: T, /) -> T: ...
@overload
def valueclass(*, frozen: bool = True, eq: bool = True,
               order: bool = False) -> Callable[[T], T]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def valueclass(cls: T | None = None, /, *, frozen: bool = True, eq: bool = True,
          order: bool = False) -> T | Callable[[T], T]:
    """Make ``cls`` a value class (frozen unless ``frozen=False``); see the module."""
    if cls is not None:
        return _process(cls, frozen, eq, order)
    return lambda c: _process(c, frozen, eq, order)


def fields(obj: Any) -> tuple[Any, ...]:
    """The fields of a value class or dataclass (or an instance of one), each with
    ``name``, ``default``, ``default_factory``, ``init``, ``repr`` and ``compare``."""
    specs = getattr(obj, "__value_fields__", None)
    if specs is not None:
        return tuple(specs)
    return dataclasses.fields(obj)


def is_value(obj: Any) -> bool:
    """Whether ``obj`` is a value class or dataclass, or an instance of one."""
    return hasattr(obj, "__value_fields__") or dataclasses.is_dataclass(obj)


def replace(obj: V, /, **changes: Any) -> V:
    """A copy of ``obj`` with ``changes``, as ``dataclasses.replace`` (``__init__`` and
    ``__post_init__`` run again)."""
    if not hasattr(obj, "__value_fields__"):
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    for spec in obj.__value_fields__:
        if not spec.init:
            if spec.name in changes:
                raise ValueError(f"field {spec.name} is declared with init=False, "
                                 "it cannot be specified with replace()")
            continue
        if spec.name not in changes:
            changes[spec.name] = getattr(obj, spec.name)
    return type(obj)(**changes)


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of ``obj`` as a dict, nested value classes, lists, tuples and dicts
    copied as ``dataclasses.asdict`` copies them."""
    if not hasattr(obj, "__value_fields__"):
        return dataclasses.asdict(obj)
    return {s.name: _copy(getattr(obj, s.name)) for s in obj.__value_fields__}


def _copy(item: Any) -> Any:
    if hasattr(type(item), "__value_fields__") or (dataclasses.is_dataclass(item)
                                                   and not isinstance(item, type)):
        return asdict(item)
    if isinstance(item, tuple) and hasattr(item, "_fields"):
        return type(item)(*[_copy(v) for v in item])
    if isinstance(item, (list, tuple)):
        return type(item)(_copy(v) for v in item)
    if isinstance(item, dict):
        return type(item)((_copy(k), _copy(v)) for k, v in item.items())
    return item
