"""Install d2lite.

The LazyConfig files under ``configs/`` are copied into the built package as
``d2lite/model_zoo/configs`` so that ``d2lite.model_zoo.get_config`` finds them
after a regular install; an editable install reads them from the repository.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "d2lite" / "model_zoo" / "configs"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "configs", target, ignore=shutil.ignore_patterns("__pycache__"))


setup(
    name="d2lite",
    version="0.1.0",
    description="A small, readable, detectron2-style object detection codebase",
    python_requires=">=3.10",
    packages=find_packages(include=["d2lite", "d2lite.*"]),
    install_requires=[
        # Pinned: these two install from the local disk; an unpinned torch
        # would try a multi-GB download.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "fvcore",
        "iopath",
        # pickles lambdas/closures given to MapDataset for spawn-started DataLoader workers (as detectron2)
        "cloudpickle",
        "omegaconf>=2.1",
        "pycocotools",
        "tensorboard",
        "numpy",
        "Pillow",
    ],
    extras_require={
        # ruff: the formatter and linter that .ci/run checks (pinned: its rules change between releases)
        "tests": ["pytest", "ruff==0.17.6"],
        # ONNX export (tools/deploy/export_model.py --format onnx): torch.onnx's exporter needs
        # onnx and onnxscript, the export's self-check runs onnxruntime. Versions tested with torch 2.14.1.
        "export": ["onnx~=1.23.2", "onnxscript~=0.7.2", "onnxruntime~=1.32.0"],
    },
    cmdclass={"build_py": BuildPyWithConfigs},
)
