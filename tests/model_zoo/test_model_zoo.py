"""d2lite.model_zoo: locating and loading shipped configs (on a temporary config tree)."""

import textwrap

import pytest

from d2lite import model_zoo
from d2lite.model_zoo import model_zoo as mz


@pytest.fixture
def config_tree(tmp_path, monkeypatch):
    root = tmp_path / "configs"
    (root / "common" / "models").mkdir(parents=True)
    (root / "COCO-Detection").mkdir()
    (root / "common" / "models" / "tiny.py").write_text(
        textwrap.dedent(
            """
            from types import SimpleNamespace
            from d2lite.config import LazyCall as L
            model = L(SimpleNamespace)(num_classes=80, head=L(SimpleNamespace)(num_classes="${..num_classes}"))
            """
        )
    )
    (root / "COCO-Detection" / "tiny_1x.py").write_text(
        "from ..common.models.tiny import model\nmodel.num_classes = 3\n"
    )
    monkeypatch.setattr(mz, "_PACKAGE_CONFIGS", tmp_path / "not_installed")
    monkeypatch.setattr(mz, "_REPO_CONFIGS", root)
    return root


def test_get_config_file(config_tree):
    path = model_zoo.get_config_file("COCO-Detection/tiny_1x.py")
    assert path == str(config_tree / "COCO-Detection" / "tiny_1x.py")


def test_unknown_config_lists_available(config_tree):
    with pytest.raises(FileNotFoundError) as exc:
        model_zoo.get_config_file("COCO-Detection/nope.py")
    msg = str(exc.value)
    assert "COCO-Detection/nope.py" in msg
    assert "COCO-Detection/tiny_1x.py" in msg  # lists what exists
    assert "common/models/tiny.py" not in msg  # common/ pieces are not leaf configs


def test_get_config_from_other_cwd(config_tree, tmp_path, monkeypatch):
    other = tmp_path / "somewhere_else"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = model_zoo.get_config("COCO-Detection/tiny_1x.py")
    assert cfg.model.num_classes == 3
    assert cfg.model.head.num_classes == 3


def test_package_configs_take_precedence(config_tree, tmp_path, monkeypatch):
    pkg = tmp_path / "pkg_configs"
    (pkg / "quick").mkdir(parents=True)
    (pkg / "quick" / "demo.py").write_text("train = dict(max_iter=7)\n")
    monkeypatch.setattr(mz, "_PACKAGE_CONFIGS", pkg)
    assert model_zoo.get_config("quick/demo.py").train.max_iter == 7
    with pytest.raises(FileNotFoundError, match="tiny_1x.py is not a config"):
        model_zoo.get_config_file("COCO-Detection/tiny_1x.py")


def test_no_config_root(tmp_path, monkeypatch):
    monkeypatch.setattr(mz, "_PACKAGE_CONFIGS", tmp_path / "a")
    monkeypatch.setattr(mz, "_REPO_CONFIGS", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="configs were not found"):
        model_zoo.get_config_file("x.py")


def _shipped_configs():
    root = mz._REPO_CONFIGS
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "common" not in p.parts)


def _targets_as_strings(obj):
    from d2lite.utils.registry import _convert_target_to_string

    if isinstance(obj, dict):
        return {
            k: (_convert_target_to_string(v) if k == "_target_" and callable(v) else _targets_as_strings(v))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(_targets_as_strings(v) for v in obj)
    return obj


@pytest.mark.parametrize(
    "name", _shipped_configs() or [pytest.param("none", marks=pytest.mark.skip("no configs/ yet"))]
)
def test_shipped_config_roundtrips(name, tmp_path):
    """Every shipped leaf config loads, saves to YAML and to_py, and both reload equal."""
    import warnings

    from omegaconf import OmegaConf

    from d2lite.config import LazyConfig

    cfg = model_zoo.get_config(name)
    assert "model" in cfg or "train" in cfg
    original = OmegaConf.to_container(cfg, resolve=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # shipped configs must be fully serializable
        LazyConfig.save(cfg, str(tmp_path / "c.yaml"))
    back = OmegaConf.to_container(LazyConfig.load(str(tmp_path / "c.yaml")), resolve=False)
    assert back == _targets_as_strings(original)
    (tmp_path / "c.py").write_text(LazyConfig.to_py(cfg, prefix=""))
    assert OmegaConf.to_container(LazyConfig.load(str(tmp_path / "c.py")), resolve=False) == original
