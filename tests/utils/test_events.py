import json
import logging
import os

import numpy as np
import pytest
import torch

from d2lite.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
    has_event_storage,
    tensorboard_tag,
)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def printer_messages():
    lg = logging.getLogger("d2lite.utils.events")
    handler = _ListHandler()
    old_level = lg.level
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    yield handler.messages
    lg.removeHandler(handler)
    lg.setLevel(old_level)


def test_get_event_storage_outside_context_is_a_clear_error():
    assert not has_event_storage()
    with pytest.raises(AssertionError, match=r"inside a 'with EventStorage\(...\)' context"):
        get_event_storage()


def test_storage_stack_and_iter():
    with EventStorage(start_iter=5) as outer:
        assert has_event_storage() and get_event_storage() is outer
        assert outer.iter == 5
        outer.step()
        assert outer.iter == 6 and outer.iteration == 6
        outer.iter = 10
        assert outer.iter == 10
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is outer
    assert not has_event_storage()


def test_smoothing_median_over_window():
    with EventStorage() as s:
        for i in range(10):
            s.put_scalar("loss", i + 1.0)  # 1..10 at iterations 0..9
            s.put_scalar("lr", 0.1 * (i + 1), smoothing_hint=False)
            s.step()
        latest = s.latest_with_smoothing_hint(window_size=4)
        # last 4 iterations (6..9) hold 7, 8, 9, 10 -> median 8.5
        assert latest["loss"] == (8.5, 9)
        # no smoothing: the latest value
        assert latest["lr"][0] == pytest.approx(1.0) and latest["lr"][1] == 9
        assert s.latest()["loss"] == (10.0, 9)
        assert s.count_samples("loss", 4) == 4
        assert s.history("loss").avg(3) == pytest.approx(9.0)
        assert s.smoothing_hints() == {"loss": True, "lr": False}
        assert set(s.histories()) == {"loss", "lr"}


def test_put_scalar_tensor_cur_iter_and_scopes():
    with EventStorage(start_iter=3) as s:
        s.put_scalar("a", torch.tensor(2.5))
        s.put_scalar("b", 1, cur_iter=7)
        s.put_scalars(c=1.0, d=np.float32(2.0), smoothing_hint=False)
        with s.name_scope("val"):
            s.put_scalar("AP", 40.0)
        assert s.latest() == {"a": (2.5, 3), "b": (1.0, 7), "c": (1.0, 3), "d": (2.0, 3), "val/AP": (40.0, 3)}
        with pytest.raises(AssertionError, match="different smoothing_hint"):
            s.put_scalar("c", 2.0, smoothing_hint=True)
        with pytest.raises(KeyError, match="No history metric available for missing"):
            s.history("missing")


def test_put_image_validates_and_clears():
    with EventStorage() as s:
        s.put_image("img", torch.rand(3, 4, 5))
        assert len(s.vis_data) == 1 and s.vis_data[0][0] == "img" and s.vis_data[0][2] == 0
        s.put_image("np_img", np.zeros((3, 2, 2), dtype=np.uint8))  # numpy CHW accepted, as in detectron2
        assert s.vis_data[1][1].dtype == torch.uint8 and s.vis_data[1][1].shape == (3, 2, 2)
        s.clear_images()
        assert s.vis_data == []
        with pytest.raises(ValueError, match="expects a \\(C, H, W\\) tensor"):
            s.put_image("bad", torch.rand(4, 5))


def test_json_writer_one_object_per_line(tmp_path):
    path = str(tmp_path / "sub" / "metrics.json")
    writer = JSONWriter(path, window_size=2)
    with EventStorage() as s:
        for i in range(4):
            s.put_scalar("loss", float(i))
            s.put_scalar("lr", 0.5, smoothing_hint=False)
            if i % 2 == 1:
                writer.write()
                # flushed at once: readable before close()
                with open(path) as f:
                    assert len(f.readlines()) == (i + 1) // 2
            s.step()
        s.put_scalar("bbox/AP", 30.0, smoothing_hint=False, cur_iter=3)
        writer.write()  # AP at iteration 3 is <= last write (3): not written again
        s.put_scalar("bbox/AP", 31.0, smoothing_hint=False)  # iteration 4
        writer.write()
    writer.close()
    lines = [json.loads(line) for line in open(path)]
    assert lines == [
        {"iteration": 1, "loss": 0.5, "lr": 0.5},  # median of 0,1
        {"iteration": 3, "loss": 2.5, "lr": 0.5},  # median of 2,3
        {"iteration": 4, "bbox/AP": 31.0},
    ]


def test_tensorboard_writer_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorboardXWriter(str(tmp_path), window_size=1)
    with EventStorage() as s:
        for i in range(3):
            s.put_scalar("loss", 2.0 * i)
            s.put_scalar("lr", 0.01, smoothing_hint=False)
            if i == 1:
                s.put_image("train/img", torch.full((3, 8, 6), 0.5))
            writer.write()
            s.step()
        assert s.vis_data == []  # written images are cleared
    writer.close()
    files = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert len(files) == 1
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    # Grouped tags (tensorboard_tag): the storage names stay those of metrics.json.
    assert set(acc.Tags()["scalars"]) == {"loss/loss", "optim/lr"}
    assert [(e.step, e.value) for e in acc.Scalars("loss/loss")] == [(0, 0.0), (1, 2.0), (2, 4.0)]
    assert [e.step for e in acc.Scalars("optim/lr")] == [0, 1, 2]
    assert acc.Tags()["images"] == ["train/img"]
    img = acc.Images("train/img")[0]
    assert (img.step, img.width, img.height) == (1, 6, 8)


def test_tensorboard_writer_unused_creates_no_file(tmp_path):
    TensorboardXWriter(str(tmp_path)).close()
    assert os.listdir(tmp_path) == []


def test_common_metric_printer_eta_from_iteration_time(printer_messages):
    printer = CommonMetricPrinter(max_iter=100, window_size=20)
    with EventStorage(start_iter=9) as s:
        for t in (0.4, 0.5, 0.6):
            s.put_scalar("time", t, cur_iter=9)
        s.put_scalar("data_time", 0.1)
        s.put_scalar("total_loss", 1.25)
        s.put_scalar("loss_cls", 0.75)
        s.put_scalar("lr", 0.02, smoothing_hint=False)
        printer.write()
        # median iteration time 0.5 s x (100 - 9 - 1) remaining iterations = 45 s
        assert s.latest()["eta_seconds"] == (pytest.approx(45.0), 9)
    (msg,) = printer_messages
    assert "eta: 0:00:45" in msg
    assert "iter: 9" in msg
    assert "total_loss: 1.25" in msg and "loss_cls: 0.75" in msg
    assert "time: 0.5000" in msg and "data_time: 0.1000" in msg
    assert "lr: 0.02" in msg
    assert "max_mem" not in msg  # CPU: no CUDA memory


def test_common_metric_printer_silent_after_training(printer_messages):
    printer = CommonMetricPrinter(max_iter=5)
    with EventStorage(start_iter=5) as s:
        s.put_scalar("loss", 1.0)
        printer.write()
    assert printer_messages == []


def test_common_metric_printer_eta_without_timer(printer_messages, monkeypatch):
    import d2lite.utils.events as events

    clock = iter([100.0, 104.0, 104.0])
    monkeypatch.setattr(events.time, "perf_counter", lambda: next(clock))
    printer = CommonMetricPrinter(max_iter=11)
    with EventStorage(start_iter=0) as s:
        s.put_scalar("loss", 1.0)
        printer.write()  # first write: no estimate yet
        s.iter = 2
        printer.write()  # 4 s for 2 iterations -> 2 s/it x (11 - 2 - 1) = 16 s
    assert "eta" not in printer_messages[0]
    assert "eta: 0:00:16" in printer_messages[1]


def test_json_writer_writes_nan_and_inf_as_null(tmp_path):
    path = str(tmp_path / "metrics.json")
    writer = JSONWriter(path)
    with EventStorage() as s:
        s.put_scalars(smoothing_hint=False, **{"bbox/AP": 50.0, "bbox/APl": float("nan"), "grad_norm": float("inf")})
        writer.write()
    writer.close()
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert record == {"iteration": 0, "bbox/AP": 50.0, "bbox/APl": None, "grad_norm": None}


@pytest.mark.parametrize(
    "name, tag",
    [
        ("total_loss", "loss/total_loss"),
        ("loss_cls", "loss/loss_cls"),
        ("loss_box_reg", "loss/loss_box_reg"),
        ("lr", "optim/lr"),
        ("grad_norm", "optim/grad_norm"),
        ("[metric]grad_scaler", "optim/grad_scaler"),
        ("time", "timing/time"),
        ("data_time", "timing/data_time"),
        ("rank_data_time", "timing/rank_data_time"),
        ("eta_seconds", "timing/eta_seconds"),
        ("bbox/AP", "test/bbox/AP"),
        ("bbox/AP-circle", "test/bbox/AP-circle"),
        ("eval/pred_boxes_0", "test/pred_boxes_0"),
        ("val_total_loss", "val/total_loss"),
        ("val_num_pos_anchors", "val/num_pos_anchors"),
        ("num_pos_anchors", "train/num_pos_anchors"),
        ("train/gt_boxes_0", "train/gt_boxes_0"),
        ("my_project/score", "my_project/score"),
    ],
)
def test_tensorboard_tags(name, tag):
    assert tensorboard_tag(name) == tag


def _tensorboard_landing_groups(tags):
    """The tag groups the TensorBoard 2.x Time Series dashboard opens on its landing
    view: groups are the first "/"-component of the tags, ordered like the sorted tags
    (tensorboard's compareTagNames: "/" and digits before letters, case-sensitive), and
    the first two are expanded."""

    def key(tag):
        return [(0, c) if c == "/" or c.isdigit() else (1, c) for c in tag]

    groups = []
    for tag in sorted(tags, key=key):
        group = tag.split("/", 1)[0]
        if group not in groups:
            groups.append(group)
    return groups[:2]


def test_tensorboard_landing_view_opens_losses_first():
    names = [
        "total_loss", "loss_cls", "loss_box_reg", "lr", "time", "data_time", "rank_data_time", "eta_seconds",
        "num_pos_anchors", "bbox/AP", "bbox/AP50", "bbox/APl", "bbox/AP-circle", "val_total_loss",
        "train/gt_boxes_0", "eval/pred_boxes_0",
    ]  # fmt: skip
    assert _tensorboard_landing_groups([tensorboard_tag(n) for n in names]) == ["loss", "optim"]
    # With the flat names, the landing view was single-point AP cards and data_time.
    assert _tensorboard_landing_groups(names) == ["bbox", "data_time"]
