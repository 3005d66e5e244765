"""mailsync.values: ``@valueclass`` behaves as the ``@dataclass`` it replaces (pure logic)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import ClassVar

import pytest

from mailsync import values
from mailsync.values import (
    FrozenInstanceError,
    asdict,
    field,
    fields,
    is_value,
    replace,
    valueclass,
)


@pytest.fixture(autouse=True, scope="module", params=["shared __init__", "compiled __init__"])
def init_kind(request):
    """Every test twice: with the shared __init__ a class has for its first instances, then
    with the compiled one (the module's classes compile at their first instance then)."""
    before = values.COMPILE_AFTER
    if request.param == "compiled __init__":
        values.COMPILE_AFTER = 0
    yield request.param
    values.COMPILE_AFTER = before


@valueclass
class Server:
    host: str
    port: int = 25
    tags: tuple[str, ...] = ()
    password: str = field(default="", repr=False)
    source: str = field(default="", compare=False)
    options: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "smtp"


@valueclass(frozen=False)
class Counter:
    name: str
    seen: dict[str, int] = field(default_factory=dict)
    total: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.seen.values())


@valueclass(order=True)
class Where:
    line: int
    column: int


@valueclass
class Tls(Server):
    verify: bool = True


def test_arguments_defaults_and_factories():
    s = Server("mx", 587, tags=("a",))
    assert (s.host, s.port, s.tags, s.password, s.options) == ("mx", 587, ("a",), "", [])
    assert Server("mx").options is not Server("mx").options  # a new list each time
    assert [f.name for f in fields(Server)] == ["host", "port", "tags", "password",
                                                "source", "options"]
    assert Server.kind == "smtp" and "kind" not in {f.name for f in fields(s)}


def test_wrong_arguments_are_refused_as_python_refuses_them():
    with pytest.raises(TypeError, match="host"):
        Server()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'hots'"):
        Server("mx", hots="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        Server("mx", host="mx")  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        Where(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="non-default argument 'b' follows default"):
        @valueclass
        class Bad:
            a: int = 1
            b: int  # type: ignore[misc]


def test_repr_leaves_out_what_it_is_told_to():
    text = repr(Server("mx", password="hunter2"))
    assert text.startswith("Server(host='mx', port=25,") and "hunter2" not in text
    assert "password" not in text


def test_equality_and_hash_over_the_compared_fields_of_the_same_class():
    a, b = Server("mx", source="a.yaml"), Server("mx", source="b.yaml")
    assert a == b                                 # source is not compared
    assert Server("mx") != Server("mx", 26)
    assert Server("mx") != Tls("mx")              # another class: never equal
    assert Server("mx").__eq__(("mx",)) is NotImplemented
    assert len({Where(1, 2), Where(1, 2), Where(2, 1)}) == 2
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        hash(a)                                   # its options are a list, as dataclasses

    @valueclass
    class Named:
        name: str
        note: str = field(default="", compare=False)
    assert hash(Named("a", "x")) == hash(Named("a", "y")) != hash(Named("b"))


def test_frozen_instances_refuse_assignment_and_deletion():
    s = Server("mx")
    with pytest.raises(FrozenInstanceError):
        s.port = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del s.host  # type: ignore[misc]
    assert isinstance(FrozenInstanceError(), AttributeError)  # as dataclasses'


def test_mutable_classes_assign_run_post_init_and_are_unhashable():
    c = Counter("x", {"a": 2, "b": 3})
    assert c.total == 5
    c.total = 7
    assert c.total == 7 and Counter.__hash__ is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'total'"):
        Counter("x", total=1)  # type: ignore[call-arg]


def test_order_compares_fields_in_turn():
    assert sorted([Where(2, 1), Where(1, 9), Where(1, 2)]) == [Where(1, 2), Where(1, 9),
                                                               Where(2, 1)]
    assert Where(1, 2) <= Where(1, 2) < Where(1, 3)
    with pytest.raises(TypeError):
        assert Where(1, 2) < Server("mx")  # type: ignore[operator]


def test_subclasses_add_fields_after_their_bases():
    t = Tls("mx", 465, verify=False)
    assert (t.host, t.port, t.verify) == ("mx", 465, False)
    assert [f.name for f in fields(t)][-1] == "verify"
    with pytest.raises(FrozenInstanceError):
        t.verify = True  # type: ignore[misc]


def test_replace_builds_a_new_instance_through_init():
    s = Server("mx", options=["x"])
    r = replace(s, port=2525)
    assert (r.host, r.port, r.options) == ("mx", 2525, ["x"]) and s.port == 25
    c = replace(Counter("x", {"a": 1}), seen={"b": 4})
    assert c.total == 4  # __post_init__ ran again
    with pytest.raises(ValueError, match="init=False"):
        replace(Counter("x"), total=3)
    with pytest.raises(TypeError):
        replace(s, nope=1)


def test_match_args_asdict_pickle_and_the_stdlib_kind():
    match Where(3, 4):
        case Where(line, column):
            assert (line, column) == (3, 4)
    assert asdict(Tls("mx", tags=("a",))) == {
        "host": "mx", "port": 25, "tags": ("a",), "password": "", "source": "",
        "options": [], "verify": True}
    assert pickle.loads(pickle.dumps(Server("mx", 2))) == Server("mx", 2)

    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int = 1
    assert is_value(Plain()) and is_value(Server) and not is_value(object())
    assert replace(Plain(), x=2) == Plain(2) and asdict(Plain()) == {"x": 1}
    assert [f.name for f in fields(Plain)] == ["x"]


def test_a_class_made_many_times_gets_its_own_compiled_init_which_does_the_same():
    @valueclass
    class Fresh:
        a: int
        b: list[int] = field(default_factory=list)
        c: str = "x"
    shared = Fresh.__dict__["__init__"]
    made = [Fresh(i) for i in range(values.COMPILE_AFTER)]
    assert Fresh.__dict__["__init__"] is shared  # a few instances: nothing compiled
    with pytest.raises(TypeError, match="'a'"):
        Fresh()  # type: ignore[call-arg]
    made += [Fresh(i, c="y") for i in range(values.COMPILE_AFTER, values.COMPILE_AFTER + 5)]
    assert Fresh.__dict__["__init__"] is not shared  # compiled, then called directly
    assert Fresh.__init__.__qualname__.endswith("Fresh.__init__")
    with pytest.raises(TypeError, match="'a'"):
        Fresh()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        Fresh(1, d=2)  # type: ignore[call-arg]
    assert [m.a for m in made] == list(range(values.COMPILE_AFTER + 5))
    assert {id(m.b) for m in made} == {id(m.b) for m in made if m.b == []} and \
        len({id(m.b) for m in made}) == len(made)  # a new list for each, before and after
    assert [m.c for m in made] == ["x"] * values.COMPILE_AFTER + ["y"] * 5


def test_a_mutable_class_own_setattr_sees_the_fields_set_by_init():
    @valueclass(frozen=False)
    class Watched:
        a: int
        b: str = "x"

        def __setattr__(self, name: str, value: object) -> None:
            seen.append(name)
            object.__setattr__(self, name, value)
    seen: list[str] = []
    Watched(1)
    assert seen == ["a", "b"]  # as a dataclass's __init__ does
