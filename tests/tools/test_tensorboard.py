"""The real TensorBoard server reads a finished run: scalars and images are there."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = [pytest.mark.slow, pytest.mark.onepass]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


@pytest.fixture
def tensorboard_url(trained_run):
    out, _ = trained_run
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(out),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                tags = _get(f"{url}/data/plugin/scalars/tags")
                if tags:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"tensorboard did not serve {out}: {proc.stdout.read() if proc.poll() is not None else ''}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_scalars_and_images_served(tensorboard_url, trained_run):
    out, _ = trained_run
    tags = _get(f"{tensorboard_url}/data/plugin/scalars/tags")
    run = next(iter(tags))
    scalar_tags = set(tags[run])
    # Grouped tags (README "TensorBoard"); metrics.json keeps detectron2's flat names.
    for tag in (
        "loss/total_loss",
        "loss/loss_cls",
        "loss/loss_box_reg",
        "optim/lr",
        "timing/time",
        "timing/data_time",
        "train/num_pos_anchors",
        "test/bbox/AP",
        "test/bbox/AP50",
    ):
        assert tag in scalar_tags, (tag, sorted(scalar_tags))
    assert all("/" in tag for tag in scalar_tags), sorted(scalar_tags)  # nothing ungrouped
    # The values TensorBoard serves are the ones metrics.json recorded.
    query = urllib.parse.urlencode({"run": run, "tag": "loss/total_loss"})
    served = {step: value for _, step, value in _get(f"{tensorboard_url}/data/plugin/scalars/scalars?{query}")}
    recorded = {}
    for line in (out / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        if "total_loss" in record:
            recorded[record["iteration"]] = record["total_loss"]
    assert served.keys() == recorded.keys()
    for step, value in recorded.items():
        assert served[step] == pytest.approx(value, rel=1e-5)
    image_tags = _get(f"{tensorboard_url}/data/plugin/images/tags")[run]
    assert any(t.startswith("train/gt_boxes") for t in image_tags), image_tags
    assert any(t.startswith("test/pred_boxes") for t in image_tags), image_tags
