"""Checkpoint benchmarks on a RetinaNet-R50-FPN-sized model (CPU).

1. align_and_update_state_dicts with C2 conversion: MSRA-R-50-style blobs -> d2lite
   RetinaNet (backbone.bottom_up.*), the matching step of loading
   detectron2://ImageNetPretrained/MSRA/R-50.pkl.
2. DetectionCheckpointer.save (atomic: temp file + fsync + rename) vs fvcore's plain save.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/solver_checkpoint.py
"""

import re
import statistics
import tempfile
import time

import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.checkpoint.c2_model_loading import align_and_update_state_dicts
from d2lite.layers import ShapeSpec
from d2lite.modeling.backbone import FPN, BasicStem, LastLevelP6P7, ResNet
from d2lite.modeling.meta_arch.retinanet import RetinaNetHead

_BN = {"weight": "s", "bias": "b"}
_BRANCH = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "shortcut": "1"}


def build():
    resnet = ResNet(
        BasicStem(norm="FrozenBN"),
        ResNet.make_default_stages(50, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
    )
    fpn = FPN(resnet, ["res3", "res4", "res5"], 256, top_block=LastLevelP6P7(2048, 256, "res5"))
    model = nn.Module()
    model.backbone = fpn
    model.head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=256)] * 5, num_classes=80, num_anchors=9, conv_dims=[256] * 4
    )
    return model


def c2_backbone_blobs(model):
    blobs = {}
    for k, v in model.backbone.bottom_up.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            continue
        m = re.match(r"stem\.conv1\.(norm\.)?(\w+)$", k)
        if m:
            name = f"res_conv1_bn_{_BN[m.group(2)]}" if m.group(1) else "conv1_w"
        else:
            m = re.match(r"res(\d)\.(\d+)\.(\w+)\.(norm\.)?(\w+)$", k)
            base = f"res{m.group(1)}_{m.group(2)}_branch{_BRANCH[m.group(3)]}"
            name = f"{base}_bn_{_BN[m.group(5)]}" if m.group(4) else f"{base}_w"
        blobs[name] = v.numpy()
    blobs["fc1000_w"] = torch.zeros(1000, 2048).numpy()
    blobs["fc1000_b"] = torch.zeros(1000).numpy()
    return blobs


def timeit(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    torch.set_num_threads(1)
    model = build()
    sd = model.state_dict()
    blobs = {k: torch.from_numpy(v) for k, v in c2_backbone_blobs(model).items()}
    n_params = sum(v.numel() for v in sd.values())
    print(f"model keys {len(sd)}, C2 blobs {len(blobs)}, params {n_params / 1e6:.1f}M")
    t_align = timeit(lambda: align_and_update_state_dicts(sd, dict(blobs), c2_conversion=True), 5)
    print(f"align_and_update_state_dicts (C2 R-50 -> RetinaNet): median {t_align * 1e3:.1f} ms")
    with tempfile.TemporaryDirectory(dir=".") as d:
        atomic = DetectionCheckpointer(model, d, save_to_disk=True)
        plain = Checkpointer(model, d, save_to_disk=True)
        t_atomic = timeit(lambda: atomic.save("atomic"), 5)
        t_plain = timeit(lambda: plain.save("plain"), 5)
    print(
        f"save ({n_params * 4 / 2**20:.0f} MiB): atomic median {t_atomic * 1e3:.0f} ms, "
        f"fvcore plain median {t_plain * 1e3:.0f} ms, ratio {t_atomic / t_plain:.2f}"
    )


if __name__ == "__main__":
    main()
