"""Project-wide iopath PathManager with URL handlers.

``PathManager`` understands local paths, ``http(s)://`` / ``ftp://`` URLs (downloaded
once into the iopath cache, ``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``), OneDrive
links, and the model-zoo prefixes ``detectron2://`` and ``d2lite://``, which both map to
``https://dl.fbaipublicfiles.com/detectron2/``, e.g.
``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` ->
``https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl``.

Without network access a URL cannot be fetched: the handlers then raise
:class:`DownloadError` naming the URL and telling the user to download the file
manually and pass its local path.
"""

import logging
from typing import Any, List

from iopath.common.file_io import (
    HTTPURLHandler,
    OneDrivePathHandler,
    PathHandler,
    get_cache_dir,
)
from iopath.common.file_io import (
    PathManager as PathManagerBase,
)

__all__ = ["PathManager", "get_cache_dir", "DownloadError", "Detectron2Handler", "resolve_model_zoo_url"]

logger = logging.getLogger(__name__)

DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
MODEL_ZOO_PREFIXES = ("detectron2://", "d2lite://")


class DownloadError(RuntimeError):
    """A remote file (URL) could not be fetched, e.g. because the machine is offline."""


def _download_error(url: str, err: BaseException) -> DownloadError:
    return DownloadError(
        f"Could not download {url}: {type(err).__name__}: {err}. This machine may have no "
        f"network access. Download the file manually (e.g. `wget {url}`) and pass its local "
        "path instead of the URL (e.g. train.init_checkpoint=/path/to/file)."
    )


class _DownloadErrorMixin:
    """Turns network errors of a URL handler into a :class:`DownloadError` naming the URL."""

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        try:
            return super()._get_local_path(path, force=force, **kwargs)  # type: ignore[misc]
        except OSError as e:  # URLError, HTTPError, timeouts, connection errors
            raise _download_error(path, e) from e


class _HTTPURLHandler(_DownloadErrorMixin, HTTPURLHandler):
    pass


class _OneDrivePathHandler(_DownloadErrorMixin, OneDrivePathHandler):
    pass


def resolve_model_zoo_url(path: str) -> str:
    """Map ``detectron2://X`` or ``d2lite://X`` to ``https://dl.fbaipublicfiles.com/detectron2/X``.

    Other paths are returned unchanged.
    """
    for prefix in MODEL_ZOO_PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix) :]
            if not name:
                raise ValueError(f"Model zoo path {path!r} names no file after {prefix!r}.")
            return DETECTRON2_URL_PREFIX + name
    return path


class Detectron2Handler(PathHandler):
    """Resolve ``detectron2://`` and ``d2lite://`` paths to detectron2's model-zoo URLs."""

    def _get_supported_prefixes(self) -> List[str]:
        return list(MODEL_ZOO_PREFIXES)

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        return PathManager.get_local_path(resolve_model_zoo_url(path), **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


PathManager = PathManagerBase()
PathManager.register_handler(_HTTPURLHandler())
PathManager.register_handler(_OneDrivePathHandler())
PathManager.register_handler(Detectron2Handler())
