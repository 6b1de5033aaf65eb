import pytest
import torch

from d2lite.structures import Boxes, Instances


def _make(n: int = 3, size=(20, 30)) -> Instances:
    boxes = Boxes(torch.arange(n * 4, dtype=torch.float32).view(n, 4))
    return Instances(size, gt_boxes=boxes, gt_classes=torch.arange(n), names=[f"o{i}" for i in range(n)])


def test_fields_set_get_has_remove():
    inst = _make()
    assert inst.image_size == (20, 30)
    assert len(inst) == 3
    assert inst.has("gt_boxes") and not inst.has("scores")
    inst.scores = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(inst.get("scores"), inst.scores)
    assert list(inst.get_fields().keys()) == ["gt_boxes", "gt_classes", "names", "scores"]
    inst.remove("scores")
    assert not inst.has("scores")
    with pytest.raises(KeyError, match="scores"):
        inst.remove("scores")
    with pytest.raises(AttributeError, match="Cannot find field 'scores'"):
        _ = inst.scores


def test_set_wrong_length_raises():
    inst = _make(3)
    with pytest.raises(ValueError, match="length 2"):
        inst.scores = torch.zeros(2)
    with pytest.raises(ValueError):
        inst.set("names", ["a"])


def test_len_of_empty_fields_raises():
    inst = Instances((5, 5))
    with pytest.raises(NotImplementedError, match="Empty Instances"):
        len(inst)
    # zero instances with fields is fine
    assert len(Instances((5, 5), scores=torch.zeros(0))) == 0
    with pytest.raises(NotImplementedError):
        iter(_make())


def test_getitem_int_slice_mask_index():
    inst = _make(4)
    one = inst[1]
    assert len(one) == 1 and one.gt_classes.tolist() == [1] and one.names == ["o1"]
    assert one.gt_boxes.tensor.tolist() == [[4.0, 5.0, 6.0, 7.0]]
    last = inst[-1]
    assert last.gt_classes.tolist() == [3] and last.names == ["o3"]
    with pytest.raises(IndexError):
        inst[4]
    with pytest.raises(IndexError):
        inst[-5]

    sl = inst[1:3]
    assert sl.gt_classes.tolist() == [1, 2] and sl.names == ["o1", "o2"]

    no_list = Instances((20, 30), gt_boxes=inst.gt_boxes, gt_classes=inst.gt_classes)
    mask = torch.tensor([True, False, False, True])
    m = no_list[mask]
    assert m.gt_classes.tolist() == [0, 3]
    assert m.gt_boxes.tensor[:, 0].tolist() == [0.0, 12.0]
    assert m.image_size == (20, 30)
    idx = no_list[torch.tensor([2, 0])]
    assert idx.gt_classes.tolist() == [2, 0]
    empty = no_list[torch.zeros(4, dtype=torch.bool)]
    assert len(empty) == 0 and isinstance(empty.gt_boxes, Boxes)


def test_cat():
    a, b = _make(2), _make(3)
    c = Instances.cat([a, b])
    assert len(c) == 5
    assert c.gt_classes.tolist() == [0, 1, 0, 1, 2]
    assert c.names == ["o0", "o1", "o0", "o1", "o2"]
    assert isinstance(c.gt_boxes, Boxes) and len(c.gt_boxes) == 5
    assert Instances.cat([a]) is a
    with pytest.raises(ValueError, match="image sizes differ"):
        Instances.cat([a, _make(2, size=(1, 1))])
    with pytest.raises(ValueError):
        Instances.cat([])
    with pytest.raises(ValueError, match="unsupported type"):
        Instances.cat([Instances((1, 1), x=(1,)), Instances((1, 1), x=(2,))])
    with pytest.raises(KeyError, match=r"Instances 1 lacks field\(s\) \['gt_boxes', 'names'\]"):
        Instances.cat([a, Instances(a.image_size, gt_classes=torch.tensor([0]))])


def test_to_and_repr():
    inst = _make(2)
    moved = inst.to("cpu")
    assert moved is not inst
    assert moved.gt_classes.tolist() == [0, 1] and moved.names == ["o0", "o1"]
    s = repr(inst)
    assert "num_instances=2" in s and "image_height=20" in s and "image_width=30" in s
    assert "gt_classes" in s
    assert "num_instances=0" in repr(Instances((1, 2)))


def test_pickle_and_deepcopy_roundtrip():
    import copy
    import pickle

    inst = _make(2)
    for clone in (pickle.loads(pickle.dumps(inst)), copy.deepcopy(inst)):
        assert clone.image_size == (20, 30)
        assert clone.gt_classes.tolist() == [0, 1]
        assert torch.equal(clone.gt_boxes.tensor, inst.gt_boxes.tensor)
        assert clone.names == ["o0", "o1"]
