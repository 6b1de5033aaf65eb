"""Model-zoo name resolution: ``catalog://``, ``detectron2://`` and ``d2lite://`` paths.

* ``detectron2://X`` and ``d2lite://X`` -> ``https://dl.fbaipublicfiles.com/detectron2/X``
  (handled by :class:`d2lite.utils.file_io.Detectron2Handler`).
* ``catalog://ImageNetPretrained/MSRA/R-50`` -> the Detectron (Caffe2) ImageNet model
  ``https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl``.

All of them are registered in :data:`d2lite.utils.file_io.PathManager`, so
``PathManager.get_local_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl")`` downloads
(or reuses the cached copy of) the file.
"""

import logging
from typing import Any, Dict, List

from iopath.common.file_io import PathHandler

from d2lite.utils.file_io import (
    DETECTRON2_URL_PREFIX,
    Detectron2Handler,
    PathManager,
    resolve_model_zoo_url,
)

__all__ = ["ModelCatalog", "ModelCatalogHandler", "Detectron2Handler", "resolve_model_zoo_url", "DETECTRON2_URL_PREFIX"]

logger = logging.getLogger(__name__)


class ModelCatalog:
    """Short names of Caffe2-format ImageNet-pretrained models -> download URLs."""

    S3_C2_DETECTRON_PREFIX = "https://dl.fbaipublicfiles.com/detectron"

    # MSRA models have STRIDE_IN_1X1=True; FAIR models have STRIDE_IN_1X1=False.
    C2_IMAGENET_MODELS: Dict[str, str] = {
        "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "FAIR/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
        "FAIR/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
        "FAIR/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
        "FAIR/X-101-64x4d": "ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl",
        "FAIR/X-152-32x8d-IN5k": "ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl",
    }

    @staticmethod
    def get(name: str) -> str:
        """``ImageNetPretrained/MSRA/R-50`` -> its URL. Unknown names raise KeyError."""
        prefix = "ImageNetPretrained/"
        if name.startswith(prefix) and name[len(prefix) :] in ModelCatalog.C2_IMAGENET_MODELS:
            rel = ModelCatalog.C2_IMAGENET_MODELS[name[len(prefix) :]]
            return f"{ModelCatalog.S3_C2_DETECTRON_PREFIX}/{rel}"
        known = [prefix + k for k in ModelCatalog.C2_IMAGENET_MODELS]
        raise KeyError(f"Model {name!r} is not in the catalog. Known names: {known}.")


class ModelCatalogHandler(PathHandler):
    """Resolve ``catalog://<name>`` through :class:`ModelCatalog`."""

    PREFIX = "catalog://"

    def _get_supported_prefixes(self) -> List[str]:
        return [self.PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        url = ModelCatalog.get(path[len(self.PREFIX) :])
        logger.info(f"Catalog entry {path} points to {url}")
        return PathManager.get_local_path(url, **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


PathManager.register_handler(ModelCatalogHandler())
