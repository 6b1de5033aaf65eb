"""@configurable on classes and functions."""

import pytest
from omegaconf import DictConfig

from d2lite.config import configurable


class Head:
    @configurable
    def __init__(self, num_classes: int, num_convs: int = 4, prior_prob: float = 0.01):
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.prior_prob = prior_prob

    @classmethod
    def from_config(cls, cfg, num_convs: int = 2):
        return {"num_classes": cfg.num_classes, "num_convs": num_convs, "prior_prob": cfg.prior}


CFG = DictConfig({"num_classes": 80, "prior": 0.02})


def test_class_plain_call_passes_through():
    h = Head(3, num_convs=1)
    assert (h.num_classes, h.num_convs, h.prior_prob) == (3, 1, 0.01)
    # a plain dict first argument is a normal argument, not a config
    h = Head({"n": 1})
    assert h.num_classes == {"n": 1}


def test_class_from_config():
    h = Head(CFG)
    assert (h.num_classes, h.num_convs, h.prior_prob) == (80, 2, 0.02)
    h = Head(cfg=CFG)
    assert h.num_classes == 80
    h = Head(CFG, 3)  # extra positional arguments go to from_config
    assert h.num_convs == 3


def test_class_explicit_kwargs_override_from_config():
    h = Head(CFG, num_convs=7)  # accepted by from_config
    assert h.num_convs == 7
    h = Head(CFG, prior_prob=0.5)  # not a from_config argument: overrides its result
    assert h.prior_prob == 0.5 and h.num_classes == 80


def test_cfg_keyword_accepts_any_object():
    class Obj:
        num_classes = 5
        prior = 0.1

    h = Head(cfg=Obj())
    assert h.num_classes == 5 and h.prior_prob == 0.1


def test_from_config_with_var_kwargs():
    class A:
        @configurable
        def __init__(self, a, b=2):
            self.a, self.b = a, b

        @classmethod
        def from_config(cls, cfg, **kwargs):
            return {"a": cfg.a, **kwargs}

    a = A(DictConfig({"a": 1}), b=5)
    assert (a.a, a.b) == (1, 5)


def test_bad_from_config_signature():
    class A:
        @configurable
        def __init__(self, a):
            self.a = a

        @classmethod
        def from_config(cls, config):
            return {"a": 1}

    with pytest.raises(TypeError, match="first argument must be named 'cfg'"):
        A(DictConfig({}))
    assert A(3).a == 3  # plain calls still work


def test_missing_from_config_classmethod():
    class A:
        @configurable
        def __init__(self, a):
            self.a = a

    with pytest.raises(TypeError, match="A uses @configurable.*'from_config' classmethod"):
        A(1)


def test_from_config_must_return_dict():
    class A:
        @configurable
        def __init__(self, a):
            self.a = a

        @classmethod
        def from_config(cls, cfg):
            return [1]

    with pytest.raises(TypeError, match="must return a dict"):
        A(DictConfig({}))


def test_function():
    @configurable(from_config=lambda cfg, scale=1: {"x": cfg.x * scale})
    def build(x, y=10):
        return x + y

    assert build(1) == 11
    assert build(1, y=2) == 3
    assert build(DictConfig({"x": 5})) == 15
    assert build(DictConfig({"x": 5}), scale=3) == 25
    assert build(DictConfig({"x": 5}), y=0) == 5
    assert build(cfg=DictConfig({"x": 2})) == 12
    assert build.__name__ == "build"


def test_function_bad_from_config():
    def wrong(config):
        return {}

    @configurable(from_config=wrong)
    def f(x=1):
        return x

    with pytest.raises(TypeError, match="wrong.*'cfg'"):
        f(DictConfig({}))


def test_decorator_misuse():
    with pytest.raises(TypeError, match="from_config"):

        @configurable
        def not_init(x):
            return x

    with pytest.raises(TypeError, match="from_config must be a function"):
        configurable(from_config=3)


def test_instantiate_configurable_with_cfg_keyword():
    from d2lite.config import LazyCall as L
    from d2lite.config import instantiate

    h = instantiate(L(Head)(cfg=CFG, num_convs=5))
    assert (h.num_classes, h.num_convs, h.prior_prob) == (80, 5, 0.02)
    h = instantiate(L(Head)(num_classes=4))
    assert h.num_classes == 4
    with pytest.raises(TypeError, match="'num_class'.*did you mean 'num_classes'"):
        instantiate(L(Head)(num_class=4))
