"""End-to-end runs of tools/lazyconfig_train_net.py on the shapes dataset."""

import json
import re

import pytest
import torch
from helpers import EVAL_SMALL, QUICK_CONFIG, SHORT, retry_once, run_tool

pytestmark = pytest.mark.slow


def _bbox_ap(console: str) -> float:
    # print_csv_format prints "copypaste: AP,AP50,..." then the numbers.
    match = re.search(r"copypaste: AP,AP50.*\n.*copypaste: ([0-9.nan]+),", console)
    assert match, console[-3000:]
    return float(match.group(1))


@pytest.mark.onepass
def test_train_writes_outputs_and_evaluates(trained_run):
    out, console = trained_run
    for name in ("config.yaml", "manifest.json", "metrics.json", "model_final.pth", "last_checkpoint", "log.txt"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard event file"
    # Strict JSON (no NaN/Infinity constants), detectron2's flat names.
    lines = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
        for line in (out / "metrics.json").read_text().splitlines()
    ]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1, 2, 3]
    assert [line["bbox/APl"] for line in lines if "bbox/APl" in line] == [None]  # NaN: shapes has no large objects
    train_line = lines[0]
    for key in ("total_loss", "loss_cls", "loss_box_reg", "lr", "data_time", "num_pos_anchors"):
        assert key in train_line, (key, train_line)
    # Evaluation at the end of training is logged at iteration max_iter, as detectron2 does.
    assert [line["iteration"] for line in lines if "bbox/AP" in line] == [4]
    assert "eta:" in console  # progress with ETA during training
    assert "Inference done" in console  # and during evaluation
    assert (out / "inference" / "coco_instances_results.json").is_file()
    ap = _bbox_ap(console)
    assert 0.0 <= ap <= 100.0
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 3


def test_training_lowers_the_loss(tmp_path):
    """40 real iterations of the demo recipe on shapes: the logged loss falls."""
    out = tmp_path / "loss"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        *SHORT,
        "train.max_iter=40",
        "train.eval_period=1000",
        "train.checkpointer.period=1000",
        "dataloader.train.total_batch_size=4",
        f"train.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    losses = {}
    for line in (out / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        if "total_loss" in record:
            losses[record["iteration"]] = record["total_loss"]  # median of the last <= 20 iterations
    assert sorted(losses) == list(range(40))
    assert losses[39] < 0.8 * losses[9], losses


@pytest.mark.onepass
def test_eval_only_reproduces_ap(trained_run, tmp_path):
    out, console = trained_run
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        "--eval-only",
        EVAL_SMALL,
        f"train.init_checkpoint={out / 'model_final.pth'}",
        f"train.output_dir={tmp_path}",
        "dataloader.test.num_workers=0",
        "model.test_score_thresh=0.0",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert _bbox_ap(proc.stdout + proc.stderr) == pytest.approx(_bbox_ap(console), abs=1e-3)


@pytest.mark.onepass
def test_resume_continues_from_last_checkpoint(trained_run, tmp_path):
    out, _ = trained_run
    import shutil

    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        "--resume",
        *SHORT,
        "train.max_iter=6",
        "train.eval_period=100",
        f"train.output_dir={resumed}",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    console = proc.stdout + proc.stderr
    assert "model_final.pth" in console  # resumed from the last checkpoint
    lines = [json.loads(line) for line in (resumed / "metrics.json").read_text().splitlines()]
    iterations = [line["iteration"] for line in lines if "total_loss" in line]
    # The first run wrote iterations 0-3; the resumed one continues with 4 and 5.
    assert iterations[-2:] == [4, 5] and iterations.count(4) == 1


def test_ema_clipping_and_bf16_from_the_train_section(tmp_path):
    out = tmp_path / "ema"
    switches = [
        "train.ema.enabled=True",
        "train.ema.momentum=0.1",
        "train.clip_grad.enabled=True",
        "train.clip_grad.clip_value=5.0",
        "train.amp.enabled=True",
    ]
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        *SHORT,
        *switches,
        "train.eval_period=100",
        f"train.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    ema = {k[len("module.") :]: v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    assert ema.keys() == checkpoint["model"].keys()
    # The EMA lags the trained weights.
    assert any(not torch.equal(ema[k], checkpoint["model"][k]) for k in ema if ema[k].is_floating_point())
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        "--eval-only",
        EVAL_SMALL,
        *switches,
        f"train.init_checkpoint={out / 'model_final.pth'}",
        f"train.output_dir={tmp_path / 'eval'}",
        "dataloader.test.num_workers=0",
        "model.test_score_thresh=0.0",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Evaluating the EMA weights" in proc.stdout + proc.stderr
    _bbox_ap(proc.stdout + proc.stderr)


@pytest.mark.onepass
def test_validation_losses_leave_training_unchanged(trained_run, tmp_path):
    """train.val_loss.period=2: val_* scalars at iterations 1 and 3; the training
    scalars are exactly those of the same run without validation (trained_run)."""
    out = tmp_path / "val_loss"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        *SHORT,
        "train.val_loss.period=2",
        "train.val_loss.num_batches=2",
        f"train.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    val_names = ("val_total_loss", "val_loss_cls", "val_loss_box_reg", "val_num_pos_anchors")
    for name in val_names:
        assert [line["iteration"] for line in lines if name in line] == [1, 3], name
    for line in lines:
        if "val_total_loss" in line:
            assert line["val_total_loss"] == pytest.approx(line["val_loss_cls"] + line["val_loss_box_reg"], rel=1e-6)
            assert line["val_num_pos_anchors"] > 0
    plain = [json.loads(line) for line in (trained_run[0] / "metrics.json").read_text().splitlines()]
    training_keys = ("total_loss", "loss_cls", "loss_box_reg", "num_pos_anchors", "lr")
    strip = lambda rows: [
        {k: r[k] for k in ("iteration",) + training_keys if k in r} for r in rows if "total_loss" in r
    ]
    assert strip(lines) == strip(plain)
    assert [line["bbox/AP"] for line in lines if "bbox/AP" in line] == [
        line["bbox/AP"] for line in plain if "bbox/AP" in line
    ]
    console = proc.stdout + proc.stderr
    assert "Validation losses after iteration 3" in console


def test_two_cpu_processes(tmp_path):
    """--num-gpus 2 without CUDA: two gloo processes train with DDP and evaluate across ranks."""
    if torch.cuda.is_available():
        pytest.skip("runs the CPU (gloo) path")
    out = tmp_path / "ddp"
    proc = retry_once(
        lambda: run_tool(
            "lazyconfig_train_net.py",
            "--num-gpus",
            "2",
            "--config-file",
            QUICK_CONFIG,
            *SHORT,
            f"train.output_dir={out}",
        )
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    console = proc.stdout + proc.stderr
    assert "World size: 2" in console or "world size: 2" in console.lower(), console[-3000:]
    assert (out / "model_final.pth").is_file()
    assert (out / "log.txt.rank1").is_file()
    results = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    # Both ranks' predictions were gathered: every one of the 50 images (SHORT evaluates on
    # shapes_val_50) has detections.
    assert len({r["image_id"] for r in results}) == 50
    assert 0.0 <= _bbox_ap(console) <= 100.0


@pytest.mark.onepass
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config-file", "configs/quick/does_not_exist.py"], "does_not_exist.py"),
        (["--config-file", QUICK_CONFIG, "train.max_itr=5"], "train.max_itr"),
        (["--config-file", QUICK_CONFIG, "train.max_iter=abc"], "train.max_iter"),
        (["--config-file", "configs/COCO-Detection/retinanet_R_50_FPN_1x.py"], "train.device=cpu"),
    ],
)
def test_bad_command_lines_exit_with_one_line_reason(args, expected):
    if "COCO" in args[1] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = run_tool("lazyconfig_train_net.py", *args, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and expected in error_lines[0], proc.stderr


_TIMINGS = ("time", "data_time", "rank_data_time", "eta_seconds")


def _metrics_without_timings(out):
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in _TIMINGS} for row in rows]


@pytest.mark.onepass
def test_async_write_metrics_writes_the_same_metrics(trained_run, tmp_path):
    """train.async_write_metrics=True (losses written by a background thread): metrics.json
    equals that of the synchronous run (trained_run), timings aside."""
    out = tmp_path / "async"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        *SHORT,
        "train.async_write_metrics=True",
        f"train.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "written by a background thread" in proc.stdout + proc.stderr
    assert "written by a background thread" not in trained_run[1]
    rows = _metrics_without_timings(out)
    assert rows == _metrics_without_timings(trained_run[0])
    assert [row["iteration"] for row in rows if "total_loss" in row] == [0, 1, 2, 3]
    assert [row["iteration"] for row in rows if "bbox/AP" in row] == [4]


@pytest.mark.onepass
def test_init_checkpoint_with_matching_heuristics(trained_run, tmp_path):
    """train.init_checkpoint=...?matching_heuristics=True loads a checkpoint whose names
    differ by a prefix (here "backbone." dropped) by suffix matching: same AP as the original."""
    out, console = trained_run
    model = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    renamed = {k.removeprefix("backbone."): v for k, v in model.items()}
    assert "bottom_up.stem.conv1.weight" in renamed and "head.cls_score.weight" in renamed
    torch.save({"model": renamed}, tmp_path / "renamed.pth")
    common = ["--config-file", QUICK_CONFIG, "--eval-only", EVAL_SMALL, "dataloader.test.num_workers=0"]
    proc = run_tool(
        "lazyconfig_train_net.py",
        *common,
        f"train.init_checkpoint={tmp_path / 'renamed.pth'}?matching_heuristics=True",
        f"train.output_dir={tmp_path / 'eval'}",
        "model.test_score_thresh=0.0",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "not found in the checkpoint" not in proc.stdout + proc.stderr
    assert _bbox_ap(proc.stdout + proc.stderr) == pytest.approx(_bbox_ap(console), abs=1e-3)
    # an unknown option stops before any work, with a one-line reason naming it
    proc = run_tool("lazyconfig_train_net.py", *common, f"train.init_checkpoint={tmp_path / 'renamed.pth'}?strict=0")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "train.init_checkpoint" in error_lines[0] and "'strict'" in error_lines[0]
