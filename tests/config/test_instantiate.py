"""instantiate() and d2lite.utils.registry.locate."""

import collections
import dataclasses
import types
from typing import List, Tuple

import pytest
import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf

from d2lite.config import LazyCall as L
from d2lite.config import instantiate
from d2lite.config.instantiate import dump_dataclass
from d2lite.utils.registry import _convert_target_to_string, locate


class Bad:
    def __init__(self, x: int):
        raise ValueError(f"x must be positive, got {x}")


def test_locate():
    assert locate("torch.nn.Linear") is nn.Linear
    assert locate("collections.OrderedDict") is collections.OrderedDict
    # nested attributes: a method of a class
    assert locate("collections.OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert locate("os.path.join") is __import__("os").path.join


@pytest.mark.parametrize(
    "name, match",
    [
        ("nonexistent_pkg_xyz.Thing", "no module named 'nonexistent_pkg_xyz'"),
        ("torch.nn.NoSuchLayer", "'torch.nn' has no attribute 'NoSuchLayer'"),
        ("collections.OrderedDict.nope", "'collections.OrderedDict' has no attribute 'nope'"),
        ("torch..nn", "dotted path"),
        ("", "dotted path"),
    ],
)
def test_locate_errors_name_the_string(name, match):
    with pytest.raises(ImportError, match=match) as exc:
        locate(name)
    assert repr(name) in str(exc.value)


def test_convert_target_to_string_roundtrip():
    s = _convert_target_to_string(nn.Conv2d)
    assert s == "torch.nn.Conv2d"  # shortest path that locates back
    assert locate(s) is nn.Conv2d
    s = _convert_target_to_string(collections.OrderedDict.fromkeys)
    assert s == "collections.OrderedDict.fromkeys"
    with pytest.raises(AttributeError):
        _convert_target_to_string(3)


def test_instantiate_nested_and_containers():
    cfg = L(types.SimpleNamespace)(
        layers=[L(nn.Linear)(in_features=2, out_features=3), 5],
        named={"a": 1},
        fn=L("collections.OrderedDict.fromkeys")(iterable=["k"]),
    )
    obj = instantiate(cfg)
    assert isinstance(obj, types.SimpleNamespace)
    assert isinstance(obj.layers, ListConfig)  # detectron2 returns ListConfig
    assert isinstance(obj.layers[0], nn.Linear) and obj.layers[0].weight.shape == (3, 2)
    assert obj.layers[1] == 5
    assert isinstance(obj.named, DictConfig) and obj.named.a == 1
    assert obj.fn == collections.OrderedDict(k=None)


def test_instantiate_string_target_and_lazy_target():
    cfg = DictConfig({"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 1})
    assert isinstance(instantiate(cfg), nn.Linear)
    # _target_ itself a lazy node that returns a callable
    cfg = L(L(locate)(name="torch.nn.ReLU"))()
    assert isinstance(instantiate(cfg), nn.ReLU)


def test_instantiate_plain_python_containers():
    data = [{"m": L(nn.ReLU)()}, {"x": 1}]
    out = instantiate(data)
    assert isinstance(out, list) and isinstance(out[0], dict)
    assert isinstance(out[0]["m"], nn.ReLU)
    assert out[1] == {"x": 1}
    d = {"_target_": nn.Linear, "in_features": 1, "out_features": 2}
    assert isinstance(instantiate(d), nn.Linear)


def test_instantiate_leaves_non_lazy_alone():
    cfg = DictConfig({"a": 1, "b": L(nn.ReLU)()}, flags={"allow_objects": True})
    assert instantiate(cfg) is cfg  # like detectron2: DictConfig without _target_ unchanged
    assert instantiate(3) == 3
    assert instantiate("x") == "x"
    assert instantiate(None) is None


def test_instantiate_interpolation():
    cfg = DictConfig(
        {"model": L(types.SimpleNamespace)(num_classes=3, head=L(types.SimpleNamespace)(n="${..num_classes}"))},
        flags={"allow_objects": True},
    )
    assert instantiate(cfg.model).head.n == 3


def _nested(bottom_up):
    return DictConfig(
        {"model": L(types.SimpleNamespace)(backbone=L(types.SimpleNamespace)(bottom_up=bottom_up))},
        flags={"allow_objects": True},
    )


def test_wrong_argument_names_key_path_target_and_argument():
    cfg = _nested(L(nn.Linear)(in_feature=3, out_features=2))
    with pytest.raises(TypeError) as exc:
        instantiate(cfg.model)
    msg = str(exc.value)
    assert "model.backbone.bottom_up" in msg
    assert "torch.nn.Linear" in msg
    assert "'in_feature'" in msg and "did you mean 'in_features'" in msg


def test_wrong_argument_from_plain_list_path():
    cfg = [{"x": L(nn.Linear)(in_features=1, out_features=1, colour=2)}]
    with pytest.raises(TypeError, match=r"config key '0\.x'.*'colour'"):
        instantiate(cfg)


def test_error_in_constructor_is_wrapped_and_chained():
    cfg = _nested(L(Bad)(x=-1))
    with pytest.raises(ValueError) as exc:
        instantiate(cfg.model)
    msg = str(exc.value)
    assert "model.backbone.bottom_up" in msg
    assert "Bad" in msg and "x must be positive, got -1" in msg
    assert isinstance(exc.value.__cause__, ValueError)
    assert str(exc.value.__cause__) == "x must be positive, got -1"


def test_missing_required_argument():
    cfg = _nested(L(nn.Linear)(in_features=3))
    with pytest.raises(TypeError, match=r"model.backbone.bottom_up.*torch.nn.Linear.*out_features"):
        instantiate(cfg.model)


def test_unlocatable_target_names_key():
    cfg = _nested(L("torch.nn.NotALayer")(x=1))
    with pytest.raises(ImportError, match=r"model.backbone.bottom_up._target_.*torch.nn.NotALayer"):
        instantiate(cfg.model)


def test_non_callable_target():
    cfg = DictConfig({"_target_": "math.pi"})
    with pytest.raises(TypeError, match="_target_.*callable"):
        instantiate(cfg)


def test_locate_module_with_broken_import(tmp_path, monkeypatch):
    (tmp_path / "d2lite_test_broken_mod.py").write_text("import d2lite_missing_dependency_xyz\nX = 1\n")
    (tmp_path / "d2lite_test_broken_mod2.py").write_text("from os import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"'d2lite_test_broken_mod.X'.*d2lite_missing_dependency_xyz"):
        locate("d2lite_test_broken_mod.X")
    with pytest.raises(ImportError, match=r"'d2lite_test_broken_mod2.X'.*no_such_name"):
        locate("d2lite_test_broken_mod2.X")


# ---------------------------------------------------------------- dataclasses (as detectron2)
@dataclasses.dataclass
class _Optim:
    lr: float = 0.1
    steps: Tuple[int, ...] = (1, 2)


@dataclasses.dataclass
class _Schedule:
    optim: _Optim = dataclasses.field(default_factory=_Optim)
    milestones: List[_Optim] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Scale:
    factor: float = 2.0

    def __call__(self, x: float) -> float:
        return self.factor * x


def _pass(**kwargs):
    return kwargs


def test_lazycall_of_a_dataclass_builds_it():
    cfg = L(_Optim)(lr=0.5)
    # omegaconf cannot hold a dataclass type: the target is its import path, as in detectron2
    assert isinstance(cfg._target_, str) and locate(cfg._target_) is _Optim
    assert cfg.lr == 0.5
    cfg.lr = 0.25  # still an editable config
    assert instantiate(cfg) == _Optim(lr=0.25, steps=(1, 2))
    # the dataclass defaults stay defaults
    assert instantiate(L(_Optim)()) == _Optim()


def test_lazycall_of_a_local_dataclass_says_it_must_be_importable():
    @dataclasses.dataclass
    class Local:
        x: int = 1

    with pytest.raises(ValueError, match=r"Local.*cannot be imported.*module level"):
        L(Local)(x=2)


def test_dataclass_objects_nested_in_a_config_come_back_as_objects():
    cfg = L(_pass)(optim=_Optim(lr=0.5), sched=_Schedule(optim=_Optim(lr=0.7)), n=3)
    out = instantiate(cfg)
    assert out["optim"] == _Optim(lr=0.5) and isinstance(out["optim"], _Optim)
    assert out["sched"] == _Schedule(optim=_Optim(lr=0.7))
    assert out["n"] == 3
    # a structured config (omegaconf's typed config) is turned into its dataclass
    structured = OmegaConf.structured(_Schedule(optim=_Optim(lr=0.9)))
    assert instantiate(structured) == _Schedule(optim=_Optim(lr=0.9))
    # in a plain (non-omegaconf) container the object is passed on as is
    obj = _Optim(lr=0.3)
    assert instantiate({"_target_": _pass, "optim": obj})["optim"] is obj


def test_callable_dataclass_object_as_target_is_called():
    cfg = DictConfig({"_target_": _Scale(factor=3.0), "x": 2.0}, flags={"allow_objects": True})
    assert instantiate(cfg) == 6.0
    assert instantiate(L(_Scale(factor=0.5))(x=4.0)) == 2.0
    assert instantiate({"_target_": _Scale(), "x": 1.5}) == 3.0  # plain dict: the object itself


def test_non_callable_dataclass_object_as_target_names_key_and_fix():
    cfg = DictConfig({"m": {"_target_": _Optim(lr=0.5)}}, flags={"allow_objects": True})
    with pytest.raises(TypeError, match=r"'m._target_' must be a callable.*L\(_Optim\)"):
        instantiate(cfg.m)


def test_dump_dataclass_roundtrip():
    obj = _Schedule(optim=_Optim(lr=0.5), milestones=[_Optim(lr=0.1), _Optim(lr=0.01)])
    dumped = dump_dataclass(obj)
    assert dumped["_target_"] == _convert_target_to_string(_Schedule)
    assert dumped["optim"] == {"_target_": _convert_target_to_string(_Optim), "lr": 0.5, "steps": (1, 2)}
    assert instantiate(dumped) == obj
    assert instantiate(OmegaConf.create(dumped, flags={"allow_objects": True})) == obj
    with pytest.raises(TypeError, match="dataclass instance"):
        dump_dataclass(_Optim)


# ------------------------------------------------------- plain objects come back unchanged
@pytest.mark.parametrize(
    "obj",
    [
        object(),
        nn.ReLU(),
        {"a": 1, "b": [1, 2]},
        [1, {"a": (2, 3)}],
        collections.OrderedDict(a=1),
        (1, "x"),
        collections.namedtuple("P", "x y")(1, 2),
        _Optim(),
        DictConfig({"a": 1}),
        "text",
        lambda x: x,
    ],
    ids=lambda o: type(o).__name__,
)
def test_plain_objects_are_returned_as_the_same_object(obj):
    # detectron2: "return as-is if don't know what to do"
    assert instantiate(obj) is obj


def test_containers_with_configs_are_built_and_keep_their_type():
    od = collections.OrderedDict(a=L(nn.ReLU)(), b=1)
    out = instantiate(od)
    assert type(out) is collections.OrderedDict and list(out) == ["a", "b"]
    assert isinstance(out["a"], nn.ReLU) and out["b"] == 1
    assert isinstance(od["a"], DictConfig)  # the input is left untouched
    dd = collections.defaultdict(list, m=L(nn.ReLU)())
    out = instantiate(dd)
    assert type(out) is collections.defaultdict and out.default_factory is list and isinstance(out["m"], nn.ReLU)
    t = instantiate((L(nn.ReLU)(), 2))
    assert isinstance(t, tuple) and isinstance(t[0], nn.ReLU) and t[1] == 2
    lst = [L(nn.ReLU)(), 1]
    out = instantiate(lst)
    assert out is not lst and isinstance(out[0], nn.ReLU) and isinstance(lst[0], DictConfig)
