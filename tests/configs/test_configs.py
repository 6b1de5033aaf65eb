"""Every shipped config loads, builds its model and runs one real training iteration."""

import pytest
import torch
from helpers import REPO_ROOT, write_coco_fixture

from d2lite.config import LazyCall as L
from d2lite.config import LazyConfig, instantiate
from d2lite.data import DatasetCatalog, MetadataCatalog
from d2lite.data import transforms as T
from d2lite.data.datasets import register_coco_instances
from d2lite.data.datasets.shapes import CLASS_NAMES, generate_shapes
from d2lite.utils.events import EventStorage

CONFIG_ROOT = REPO_ROOT / "configs"
LEAF_CONFIGS = sorted(
    str(p.relative_to(CONFIG_ROOT))
    for p in CONFIG_ROOT.rglob("*.py")
    if "common" not in p.relative_to(CONFIG_ROOT).parts
)


@pytest.fixture(scope="module")
def small_datasets(tmp_path_factory):
    """A tiny COCO-format fixture (non-contiguous ids) and a tiny shapes split, registered."""
    root = tmp_path_factory.mktemp("data")
    json_file = write_coco_fixture(root / "coco", "train2017", num_images=4)
    register_coco_instances("test_configs_coco", {}, str(json_file), str(root / "coco" / "train2017"))
    shapes_json, shapes_images = generate_shapes(str(root / "shapes"), "mini", num_images=6, seed=3)
    register_coco_instances("test_configs_shapes", {"thing_classes": list(CLASS_NAMES)}, shapes_json, shapes_images)
    yield {"coco": "test_configs_coco", "shapes": "test_configs_shapes"}
    for name in ("test_configs_coco", "test_configs_shapes"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_leaf_configs_are_found():
    assert "COCO-Detection/retinanet_R_50_FPN_1x.py" in LEAF_CONFIGS
    assert "COCO-Detection/retinanet_R_50_FPN_3x.py" in LEAF_CONFIGS
    assert "quick/retinanet_R_18_FPN_shapes.py" in LEAF_CONFIGS


@pytest.mark.parametrize("config_name", LEAF_CONFIGS)
def test_config_trains_one_iteration(config_name, small_datasets):
    cfg = LazyConfig.load(str(CONFIG_ROOT / config_name))
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{config_name} lacks `{key}`"
    dataset = small_datasets["shapes" if "shapes" in config_name else "coco"]
    cfg.dataloader.train.dataset.names = dataset
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    # Keep R50 fast: small images.
    cfg.dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=160)]

    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    multiplier = instantiate(cfg.lr_multiplier)
    assert 0 < multiplier(0.5) <= 1.0
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_coco_configs_read_coco_2017_from_datasets_dir():
    cfg = LazyConfig.load(str(CONFIG_ROOT / "COCO-Detection/retinanet_R_50_FPN_1x.py"))
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
    assert cfg.dataloader.evaluator.dataset_name == "coco_2017_val"
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.optimizer.lr == 0.01
    cfg3 = LazyConfig.load(str(CONFIG_ROOT / "COCO-Detection/retinanet_R_50_FPN_3x.py"))
    assert cfg3.train.max_iter == 270000
    m = instantiate(cfg3.lr_multiplier)
    # 3x: lr drops at 210k and 250k of 270k iterations, after 1000 warmup iterations.
    assert m(500 / 270000) == pytest.approx(0.001 * 0.5 + 0.5, rel=1e-6)
    assert m(209999 / 270000) == pytest.approx(1.0)
    assert m(210001 / 270000) == pytest.approx(0.1)
    assert m(250001 / 270000) == pytest.approx(0.01)
