"""Describe the software/hardware environment (logged at the start of every run and
saved in the run manifest)."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Dict

import torch

__all__ = ["collect_env_dict", "collect_env_info"]

_PACKAGES = ("numpy", "torchvision", "fvcore", "iopath", "omegaconf", "pycocotools", "PIL", "tensorboard")


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def collect_env_dict() -> Dict[str, str]:
    """
    Returns:
        dict[str, str]: name -> value for: sys.platform, Python, d2lite, PyTorch (and
        its file), CUDA available, GPU names and CUDA version when available, CPU count,
        and the versions of numpy, torchvision, fvcore, iopath, omegaconf, pycocotools,
        Pillow and tensorboard ("not installed" if missing).
    """
    import d2lite

    info: Dict[str, str] = {}
    info["sys.platform"] = sys.platform
    info["Python"] = sys.version.replace("\n", "")
    info["platform"] = platform.platform()
    info["d2lite"] = str(getattr(d2lite, "__version__", "unknown")) + " @" + os.path.dirname(d2lite.__file__)
    info["PyTorch"] = torch.__version__ + " @" + os.path.dirname(torch.__file__)
    info["PyTorch debug build"] = str(torch.version.debug)
    cuda_available = torch.cuda.is_available()
    info["CUDA available"] = str(cuda_available)
    if cuda_available:
        info["CUDA version (torch)"] = str(torch.version.cuda)
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        for name in sorted(set(names)):
            ids = ",".join(str(i) for i, n in enumerate(names) if n == name)
            info["GPU " + ids] = name
    info["CPU count"] = str(os.cpu_count())
    info["torch num threads"] = str(torch.get_num_threads())
    for pkg in _PACKAGES:
        info["Pillow" if pkg == "PIL" else pkg] = _version(pkg)
    return info


def collect_env_info() -> str:
    """Returns: the :func:`collect_env_dict` entries as an aligned two-column table."""
    info = collect_env_dict()
    width = max(len(k) for k in info)
    lines = ["-" * (width + 40)]
    lines += [f"{k:<{width}}  {v}" for k, v in info.items()]
    lines.append("-" * (width + 40))
    return "\n".join(lines)


if __name__ == "__main__":
    print(collect_env_info())
