"""tools/deploy/export_model.py: the shapes-demo RetinaNet (a few training iterations) in all
three formats, self-checked by the tool and compared again here on images of several sizes,
one without detections; bad input gives one clear line."""

import contextlib
import io
import json
import subprocess
import sys

import pytest
from helpers import (
    QUICK_CONFIG,
    REPO_ROOT,
    assert_exports_match_eager,
    export_check_images,
    run_tool,
    threshold_leaving_one_image_empty,
)

from d2lite.engine.lazy_train import load_config
from d2lite.export.check import eager_detections
from d2lite.export.lazy_export import load_trained_model, sample_images

sys.path.insert(0, str(REPO_ROOT / "tools" / "deploy"))

import export_model  # noqa: E402

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass

CONFIG = str(REPO_ROOT / QUICK_CONFIG)


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = export_model.main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_error_line(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export_model.py: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_format_is_one_line(tmp_path):
    rc, _, err = run_main("--config-file", CONFIG, "--format", "tflite", "--output", str(tmp_path))
    assert rc == 2
    assert_one_error_line(err, "argument --format: invalid choice: 'tflite'", "exported_program")


def test_missing_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "model_final.pth"
    rc, _, err = run_main(
        "--config-file",
        CONFIG,
        "--format",
        "torchscript",
        "--output",
        str(tmp_path),
        f"train.init_checkpoint={missing}",
    )
    assert rc == 2
    assert_one_error_line(err, f"train.init_checkpoint={missing}: no such checkpoint file")
    rc, _, err = run_main("--config-file", CONFIG, "--format", "torchscript", "--output", str(tmp_path))
    assert rc == 2
    assert_one_error_line(err, "train.init_checkpoint is empty")


def test_missing_onnx_extra_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    rc, _, err = run_main("--config-file", CONFIG, "--format", "onnx", "--output", str(tmp_path))
    assert rc == 2
    assert_one_error_line(err, "needs onnxscript (not installed)", "pip install -e '.[export]'")


@pytest.fixture(scope="module")
def retinanet_export(trained_run, tmp_path_factory):
    """The 4-iteration demo RetinaNet exported to all formats by the tool (its self-check on),
    with a score threshold under which one of the test images has no detections."""
    pytest.importorskip("onnxruntime", reason="the ONNX export needs the export extra: pip install -e '.[export]'")
    opts = [f"train.init_checkpoint={trained_run[0] / 'model_final.pth'}", "dataloader.test.num_workers=0"]
    cfg = load_config(CONFIG, opts)
    model, _ = load_trained_model(cfg)
    samples = export_check_images(sample_images(cfg, 3))
    threshold, empty = threshold_leaving_one_image_empty(model, samples)
    opts.append(f"model.test_score_thresh={threshold}")
    out = tmp_path_factory.mktemp("retinanet_export")
    logs = {}
    for fmt in ("exported_program", "torchscript"):
        logs[fmt] = run_main(
            "--config-file", CONFIG, "--format", fmt, "--output", str(out), "--check-images", "3", *opts
        )
    proc = run_tool("deploy/export_model.py", "--config-file", CONFIG, "--format", "onnx", "--output", str(out), *opts)
    logs["onnx"] = (proc.returncode, proc.stdout, proc.stderr)
    model.test_score_thresh = threshold
    return out, logs, model, samples, empty


@pytest.mark.slow
def test_tool_exports_and_checks_every_format(retinanet_export):
    out, logs, *_ = retinanet_export
    for fmt, (rc, stdout, stderr) in logs.items():
        assert rc == 0, f"{fmt}: {stdout[-2000:]} {stderr[-3000:]}"
        assert "check passed:" in stdout, stdout
    meta = json.loads((out / "export.json").read_text())
    assert set(meta["exports"]) == {"exported_program", "torchscript", "onnx"}
    assert meta["exports"]["exported_program"]["check"]["num_images"] == 3
    assert meta["exports"]["onnx"]["check"]["num_images"] == 4  # the tool's default
    assert meta["inputs"]["image"]["min_size"] == 33 and meta["inputs"]["image"]["max_size"] == 2048
    assert meta["class_names"] == ["circle", "square", "triangle"] and meta["weights"] == "model"
    assert meta["test_augmentations"][0]["type"].endswith("ResizeShortestEdge")
    for name in ("model.pt2", "model.ts", "model.onnx"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_exports_equal_eager_model_on_several_sizes_and_an_image_without_detections(retinanet_export):
    out, _, model, samples, empty = retinanet_export
    expected = assert_exports_match_eager(model, [out / "model.pt2", out / "model.ts", out / "model.onnx"], samples)
    counts = [len(scores) for _, scores, _ in expected]
    assert counts[empty] == 0 and all(n > 0 for i, n in enumerate(counts) if i != empty), counts


@pytest.mark.slow
def test_readme_deploy_example_runs_without_d2lite_and_prints_the_eager_detections(retinanet_export, datasets_root):
    out, _, model, _, _ = retinanet_export
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 14
    image_file = datasets_root / "shapes" / "val" / "000000.jpg"
    code = code.replace("export/retinanet", str(out)).replace("datasets/shapes/val/000000.jpg", str(image_file))
    prelude = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'd2lite' / 'export')!r}); import runtime; "
        "runtime.forbid_imports(['d2lite', 'rtmdet']); sys.path.pop(0)\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", prelude + code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg = load_config(CONFIG, ["dataloader.test.num_workers=0"])
    sample = sample_images(cfg, 1)[0]
    assert sample.name == str(image_file)
    boxes, scores, classes = eager_detections(model, sample)
    names = ["circle", "square", "triangle"]
    expected = [
        f"{names[c]} {s:.3f} {[round(v, 1) for v in b]}"
        for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())
    ]
    assert len(expected) > 0 and proc.stdout.splitlines() == expected
