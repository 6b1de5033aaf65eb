"""LazyConfig.load / save / apply_overrides / to_py and LazyCall."""

import textwrap
import types
import warnings

import pytest
import torch.nn as nn
import yaml
from omegaconf import DictConfig, OmegaConf

from d2lite.config import LazyCall as L
from d2lite.config import LazyConfig, instantiate

COMMON_MODEL = """
from types import SimpleNamespace
from d2lite.config import LazyCall as L

model = L(SimpleNamespace)(
    num_classes=80,
    head=L(SimpleNamespace)(
        num_classes="${..num_classes}",
        convs=L(SimpleNamespace)(n="${...num_classes}"),
    ),
    pixel_mean=[103.53, 116.28, 123.675],
)
"""

COMMON_TRAIN = """
train = dict(max_iter=100, lr=0.01, output_dir="./output", init_checkpoint="", amp=dict(enabled=False))
"""

LEAF = """
import os
from ..common.models.retinanet import model
from ..common.train import train
from d2lite.utils.registry import locate   # absolute imports of d2lite work

model.num_classes = 3
train.max_iter = 10
here = dict(file=__file__, basename=os.path.basename(__file__))
_private = dict(a=1)
helper_fn = lambda x: x
"""


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def cfg_tree(tmp_path):
    root = tmp_path / "configs"
    _write(root, "common/models/retinanet.py", COMMON_MODEL)
    _write(root, "common/train.py", COMMON_TRAIN)
    leaf = _write(root, "COCO-Detection/retinanet_leaf.py", LEAF)
    return root, leaf


def test_lazycall_returns_dictconfig_with_target():
    cfg = L(nn.Linear)(in_features=3, out_features=4)
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ is nn.Linear
    assert cfg.in_features == 3 and cfg.out_features == 4
    with pytest.raises(TypeError, match="callable"):
        L(3)


def test_load_relative_imports_and_keys(cfg_tree):
    _, leaf = cfg_tree
    cfg = LazyConfig.load(str(leaf))
    assert isinstance(cfg, DictConfig)
    # top-level dict/DictConfig values only; no modules, functions, private names
    assert set(cfg.keys()) == {"model", "train", "here"}
    assert cfg.model.num_classes == 3
    assert cfg.train.max_iter == 10 and cfg.train.lr == 0.01
    assert cfg.here.file == str(leaf)
    assert cfg.here.basename == "retinanet_leaf.py"
    # interpolation across nested lazy nodes follows the edit in the leaf file
    assert cfg.model.head.num_classes == 3
    assert cfg.model.head.convs.n == 3
    built = instantiate(cfg.model)
    assert isinstance(built, types.SimpleNamespace)
    assert built.head.num_classes == 3 and built.head.convs.n == 3


def test_load_keys_argument(cfg_tree):
    _, leaf = cfg_tree
    model = LazyConfig.load(str(leaf), "model")
    assert model.num_classes == 3
    model, train = LazyConfig.load(str(leaf), ("model", "train"))
    assert train.max_iter == 10
    with pytest.raises(KeyError, match="nonexistent"):
        LazyConfig.load(str(leaf), "nonexistent")


def test_load_twice_independent(cfg_tree):
    _, leaf = cfg_tree
    a = LazyConfig.load(str(leaf))
    b = LazyConfig.load(str(leaf))
    a.model.num_classes = 7
    a.train.amp.enabled = True
    assert b.model.num_classes == 3
    assert b.train.amp.enabled is False
    # the imported common file is executed fresh, too
    c = LazyConfig.load(str(cfg_tree[0] / "common/train.py"))
    assert c.train.max_iter == 100


def test_load_from_other_cwd(cfg_tree, tmp_path, monkeypatch):
    _, leaf = cfg_tree
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert LazyConfig.load(str(leaf)).model.num_classes == 3


def test_load_rel(cfg_tree, tmp_path):
    root, _ = cfg_tree
    _write(
        root,
        "COCO-Detection/uses_load_rel.py",
        """
        from d2lite.config import LazyConfig
        train = LazyConfig.load_rel("../common/train.py", "train")
        train.max_iter = 5
        """,
    )
    cfg = LazyConfig.load(str(root / "COCO-Detection/uses_load_rel.py"))
    assert cfg.train.max_iter == 5 and cfg.train.lr == 0.01


def test_relative_import_of_directory_and_submodule(cfg_tree):
    root, _ = cfg_tree
    _write(
        root,
        "COCO-Detection/dir_import.py",
        """
        from ..common import train
        from ..common.models import retinanet
        cfg_train = train.train
        model = retinanet.model
        """,
    )
    cfg = LazyConfig.load(str(root / "COCO-Detection/dir_import.py"))
    assert cfg.cfg_train.max_iter == 100
    assert cfg.model.num_classes == 80


def test_syntax_error_names_file_and_line(tmp_path):
    bad = _write(tmp_path, "bad.py", "a = dict(x=1)\nb = dict(x=\n")
    with pytest.raises(SyntaxError) as exc:
        LazyConfig.load(str(bad))
    assert str(bad) in str(exc.value)
    assert "line 2" in str(exc.value)
    assert exc.value.filename == str(bad)


def test_syntax_error_in_imported_file_names_that_file(tmp_path):
    _write(tmp_path, "common/broken.py", "x = (\n")
    leaf = _write(tmp_path, "leaf/a.py", "from ..common.broken import x\n")
    with pytest.raises(SyntaxError, match="broken.py, line 1"):
        LazyConfig.load(str(leaf))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "cfg.py"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        LazyConfig.load(str(missing))
    with pytest.raises(ValueError, match="has to be a .py"):
        LazyConfig.load(str(tmp_path / "cfg.txt"))


def test_relative_import_missing_file(tmp_path):
    leaf = _write(tmp_path, "configs/leaf.py", "from .common.nothere import model\n")
    with pytest.raises(ImportError) as exc:
        LazyConfig.load(str(leaf))
    msg = str(exc.value)
    assert str(leaf) in msg
    assert "from .common.nothere import model" in msg
    assert "nothere.py does not exist" in msg


def test_relative_import_leaving_config_tree(tmp_path):
    # ``....`` resolves outside tmp_path/configs to a location with no such file
    leaf = _write(tmp_path, "configs/sub/leaf.py", "from ....outside_tree import model\n")
    with pytest.raises(ImportError, match=r"from \.\.\.\.outside_tree import model"):
        LazyConfig.load(str(leaf))


@pytest.mark.parametrize(
    "files, statement",
    [
        # into a Python package next to the configs
        ({"pkg/__init__.py": "", "pkg/mod.py": "model = dict(a=1)\n"}, "from ...pkg.mod import model"),
        # up to the project root (a folder with setup.py)
        ({"setup.py": "", "secrets.py": "model = dict(a=1)\n"}, "from ...secrets import model"),
    ],
)
def test_relative_import_into_existing_code_leaves_config_tree(tmp_path, files, statement):
    for name, text in files.items():
        _write(tmp_path, name, text)
    leaf = _write(tmp_path, "configs/sub/leaf.py", statement + "\n")
    with pytest.raises(ImportError, match="outside the config tree") as exc:
        LazyConfig.load(str(leaf))
    assert statement in str(exc.value) and str(leaf) in str(exc.value)


def test_relative_import_missing_name(cfg_tree):
    root, _ = cfg_tree
    leaf = _write(root, "COCO-Detection/missing_name.py", "from ..common.train import optimizer\n")
    with pytest.raises(ImportError, match="does not define 'optimizer'"):
        LazyConfig.load(str(leaf))


def test_relative_import_outside_config_file_is_normal():
    # The patch only applies while a config file runs and only to config modules.
    import builtins

    before = builtins.__import__
    with pytest.raises(FileNotFoundError):
        LazyConfig.load("/definitely/not/here.py")
    assert builtins.__import__ is before


def test_import_hook_restored_after_error(tmp_path):
    import builtins

    before = builtins.__import__
    leaf = _write(tmp_path, "a.py", "raise RuntimeError('boom in config')\n")
    with pytest.raises(RuntimeError, match="boom in config"):
        LazyConfig.load(str(leaf))
    assert builtins.__import__ is before


def test_load_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  _target_: torch.nn.Linear\n  in_features: 2\n  out_features: 3\n")
    cfg = LazyConfig.load(str(p))
    m = instantiate(cfg.model)
    assert isinstance(m, nn.Linear) and m.weight.shape == (3, 2)


def test_save_load_roundtrip(cfg_tree, tmp_path):
    _, leaf = cfg_tree
    cfg = LazyConfig.load(str(leaf))
    out = tmp_path / "saved.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unserializable here: no warning
        LazyConfig.save(cfg, str(out))
    text = out.read_text()
    assert "_target_: types.SimpleNamespace" in text
    assert "${..num_classes}" in text  # interpolations are kept, not resolved
    back = LazyConfig.load(str(out))
    assert back.model.head.num_classes == 3
    # equal after the class objects are written as import paths
    expected = OmegaConf.to_container(cfg, resolve=False)
    for node in (expected["model"], expected["model"]["head"], expected["model"]["head"]["convs"]):
        node["_target_"] = "types.SimpleNamespace"
    assert OmegaConf.to_container(back, resolve=False) == expected
    assert instantiate(back.model).head.convs.n == 3
    assert not (tmp_path / "saved.yaml.pkl").exists()


def test_save_nested_attribute_target(tmp_path):
    import collections

    cfg = DictConfig({"d": L(collections.OrderedDict.fromkeys)(iterable=["a", "b"])}, flags={"allow_objects": True})
    LazyConfig.save(cfg, str(tmp_path / "n.yaml"))
    back = LazyConfig.load(str(tmp_path / "n.yaml"))
    assert back.d._target_ == "collections.OrderedDict.fromkeys"
    assert instantiate(back.d) == collections.OrderedDict([("a", None), ("b", None)])


def test_save_with_lambda_warns_and_saves_rest(tmp_path):
    def local_fn(x):
        return x

    cfg = DictConfig(
        {
            "train": {"max_iter": 5, "ema": {"momentum_fn": lambda step: 0.1}},
            "model": L(nn.Linear)(in_features=2, out_features=3),
            "other": L(local_fn)(x=1),
        },
        flags={"allow_objects": True},
    )
    out = tmp_path / "lam.yaml"
    with pytest.warns(UserWarning) as rec:
        LazyConfig.save(cfg, str(out))
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "train.ema.momentum_fn" in msg and "other._target_" in msg
    assert "model" not in msg.replace("momentum_fn", "")
    back = LazyConfig.load(str(out))
    assert back.train.max_iter == 5
    assert back.model._target_ == "torch.nn.Linear"
    assert back.train.ema.momentum_fn.startswith("<unserializable> function")
    # cloudpickle is a dependency (MapDataset pickles lambdas with it): as detectron2 does, a
    # complete copy is pickled next to the YAML, and the warning says where
    assert f"{out}.pkl" in msg
    import cloudpickle

    with open(f"{out}.pkl", "rb") as f:
        full = cloudpickle.load(f)
    assert full.train.ema.momentum_fn(7) == 0.1 and instantiate(full.other) == 1


def _cfg_for_overrides():
    return DictConfig(
        {
            "model": L(types.SimpleNamespace)(
                num_classes=80,
                pixel_mean=[103.53, 116.28, 123.675],
                backbone=L(types.SimpleNamespace)(depth=50, norm="FrozenBN"),
                head="${.num_classes}",
            ),
            "train": {
                "max_iter": 100,
                "lr": 0.01,
                "output_dir": "./out",
                "init_checkpoint": None,
                "amp": {"enabled": False},
            },
        },
        flags={"allow_objects": True},
    )


def test_apply_overrides_values():
    cfg = _cfg_for_overrides()
    ret = LazyConfig.apply_overrides(
        cfg,
        [
            "train.max_iter=10",
            "train.lr=1",  # int for float is fine, stored as float
            "train.output_dir=abc",
            "train.init_checkpoint=/x/model.pth",  # anything replaces None
            "train.amp.enabled=True",
            "model.pixel_mean=[1.0,2,3]",
            "model.pixel_mean.0=3.5",  # list element by index
            "model.backbone.norm=None",  # None replaces anything
            "model.head=5",  # anything replaces an interpolation
            "model.backbone._target_=types.SimpleNamespace",
        ],
    )
    assert ret is cfg
    assert cfg.train.max_iter == 10
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.output_dir == "abc"
    assert cfg.train.init_checkpoint == "/x/model.pth"
    assert cfg.train.amp.enabled is True
    assert list(cfg.model.pixel_mean) == [3.5, 2, 3]
    assert cfg.model.backbone.norm is None
    assert cfg.model.head == 5
    assert cfg.model.backbone._target_ == "types.SimpleNamespace"


def test_apply_overrides_dict_merges_strictly():
    cfg = _cfg_for_overrides()
    LazyConfig.apply_overrides(cfg, ["model.backbone={'depth': 18}"])
    assert cfg.model.backbone.depth == 18 and cfg.model.backbone.norm == "FrozenBN"
    assert cfg.model.backbone._target_ is types.SimpleNamespace
    with pytest.raises(KeyError, match="model.backbone.dpth.*model.backbone.depth"):
        LazyConfig.apply_overrides(cfg, ["model.backbone={'dpth': 18}"])
    with pytest.raises(TypeError, match="model.backbone.depth"):
        LazyConfig.apply_overrides(cfg, ["model.backbone={'depth': 'deep'}"])


def test_apply_overrides_target_must_be_importable():
    cfg = _cfg_for_overrides()
    with pytest.raises(ImportError, match="model.backbone._target_.*types.NoSuchThing"):
        LazyConfig.apply_overrides(cfg, ["model.backbone._target_=types.NoSuchThing"])


def test_apply_overrides_string_key_keeps_text():
    cfg = _cfg_for_overrides()
    LazyConfig.apply_overrides(cfg, ["train.output_dir=123", "train.amp.enabled=false"])
    assert cfg.train.output_dir == "123"
    assert cfg.train.amp.enabled is False


def test_apply_overrides_missing_key_suggests():
    cfg = _cfg_for_overrides()
    with pytest.raises(KeyError) as exc:
        LazyConfig.apply_overrides(cfg, ["train.max_iters=10"])
    msg = str(exc.value)
    assert "train.max_iters" in msg and "Did you mean: train.max_iter" in msg
    with pytest.raises(KeyError, match="model.backbone.dept'.*model.backbone.depth"):
        LazyConfig.apply_overrides(cfg, ["model.backbone.dept=101"])
    with pytest.raises(KeyError, match="model.pixel_mean.5"):
        LazyConfig.apply_overrides(cfg, ["model.pixel_mean.5=1"])
    with pytest.raises(KeyError, match="'train.max_iter' is a int"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter.x=1"])
    assert "max_iters" not in cfg.train  # nothing was created


def test_apply_overrides_type_errors():
    cfg = _cfg_for_overrides()
    with pytest.raises(TypeError, match=r"train.max_iter.*int.*str \('abc'\)"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=abc"])
    with pytest.raises(TypeError, match=r"train.max_iter.*float"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=2.5"])
    with pytest.raises(TypeError, match=r"train.amp.enabled.*bool.*int"):
        LazyConfig.apply_overrides(cfg, ["train.amp.enabled=1"])
    with pytest.raises(TypeError, match=r"model.backbone.*lazy call"):
        LazyConfig.apply_overrides(cfg, ["model.backbone=3"])
    with pytest.raises(TypeError, match=r"model.pixel_mean.*list"):
        LazyConfig.apply_overrides(cfg, ["model.pixel_mean=3"])
    with pytest.raises(ValueError, match="key=value"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter"])
    assert cfg.train.max_iter == 100


def _exec_to_py(src):
    ns = {"cfg": DictConfig({}, flags={"allow_objects": True})}
    exec(compile(src, "<to_py>", "exec"), ns)
    return ns["cfg"]


def test_to_py_exec_roundtrip(cfg_tree):
    _, leaf = cfg_tree
    cfg = LazyConfig.load(str(leaf))
    src = LazyConfig.to_py(cfg)
    assert "from types import SimpleNamespace" in src
    assert "from d2lite.config import LazyCall as L" in src
    assert "cfg.model = L(SimpleNamespace)(" in src
    rebuilt = _exec_to_py(src)
    assert OmegaConf.to_container(rebuilt, resolve=False) == OmegaConf.to_container(cfg, resolve=False)
    assert rebuilt.model.head.num_classes == 3  # interpolation still live


def test_to_py_without_prefix_is_a_config_file(tmp_path):
    cfg = _cfg_for_overrides()
    cfg.model.odd = {"not-an-identifier": 1, "class": 2}
    cfg.train.inf = float("inf")
    cfg.train.shape = (1, 2)
    src = LazyConfig.to_py(cfg, prefix="")
    p = tmp_path / "dumped.py"
    p.write_text(src)
    back = LazyConfig.load(str(p))
    expected = OmegaConf.to_container(cfg, resolve=False)
    assert OmegaConf.to_container(back, resolve=False) == expected
    # long lines are wrapped
    assert max(len(line) for line in src.splitlines()) <= 100


def test_to_py_name_clash_and_string_target():
    import torch

    cfg = DictConfig(
        {
            "a": L(nn.Linear)(in_features=1, out_features=1),
            "b": L(torch.ao.nn.quantized.Linear)(in_features=1, out_features=1),
            "c": L("some.unknown.Thing")(x=1),
        },
        flags={"allow_objects": True},
    )
    src = LazyConfig.to_py(cfg)
    rebuilt = _exec_to_py(src)
    assert rebuilt.a._target_ is nn.Linear
    assert rebuilt.b._target_ is torch.ao.nn.quantized.Linear
    assert rebuilt.c._target_ == "some.unknown.Thing"


def test_tuples_survive_save_load_and_instantiate(tmp_path):
    cfg = DictConfig(
        {"aug": L(types.SimpleNamespace)(short_edge_length=(640, 672), nested=(1, L(types.SimpleNamespace)(y=2)))},
        flags={"allow_objects": True},
    )
    built = instantiate(cfg.aug)
    assert built.short_edge_length == (640, 672)
    assert isinstance(built.nested[1], types.SimpleNamespace) and built.nested[1].y == 2
    LazyConfig.save(cfg, str(tmp_path / "t.yaml"))
    assert "!!python/tuple [640, 672]" in (tmp_path / "t.yaml").read_text()
    back = LazyConfig.load(str(tmp_path / "t.yaml"))
    assert instantiate(back.aug).short_edge_length == (640, 672)
    assert OmegaConf.to_container(back)["aug"]["short_edge_length"] == (640, 672)
    # element override of an (immutable) tuple keeps a tuple
    LazyConfig.apply_overrides(cfg, ["aug.short_edge_length.1=700"])
    assert instantiate(cfg.aug).short_edge_length == (640, 700)
    LazyConfig.apply_overrides(cfg, ["aug.short_edge_length=[1,2,3]"])
    assert instantiate(cfg.aug).short_edge_length == (1, 2, 3)


def test_yaml_loader_is_safe(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        LazyConfig.load(str(p))


def test_save_keeps_importable_class_values(tmp_path):
    """Classes passed as values (not `_target_`), e.g. ResNet.make_stage(block_class=BasicBlock),
    are saved as `!!python/name:` import paths and load back as the same objects."""
    import warnings

    from d2lite.config import LazyCall as L
    from d2lite.modeling.backbone import BasicBlock, ResNet

    cfg = OmegaConf.create(
        {
            "stage": L(ResNet.make_stage)(
                block_class=BasicBlock, num_blocks=1, in_channels=4, out_channels=4, stride_per_block=[1]
            )
        },
        flags={"allow_objects": True},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        LazyConfig.save(cfg, str(tmp_path / "c.yaml"))
    assert "!!python/name:" in (tmp_path / "c.yaml").read_text()
    back = LazyConfig.load(str(tmp_path / "c.yaml"))
    assert back.stage.block_class is BasicBlock
    blocks = instantiate(back.stage)
    assert isinstance(blocks[0], BasicBlock)


def test_override_adds_keyword_argument_of_lazy_target():
    cfg = OmegaConf.create({"model": L(_Point)(x=1)}, flags={"allow_objects": True})
    LazyConfig.apply_overrides(cfg, ["model.y=5"])  # `y` is an argument of _Point left at its default
    assert instantiate(cfg.model).y == 5
    with pytest.raises(KeyError, match="model.z"):
        LazyConfig.apply_overrides(cfg, ["model.z=5"])  # not an argument: still an error


class _Point:
    def __init__(self, x: int, y: int = 0):
        self.x, self.y = x, y
