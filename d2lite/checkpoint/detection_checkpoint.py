"""DetectionCheckpointer: fvcore's Checkpointer with atomic saves and model-zoo formats."""

import logging
import os
import pickle
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

import torch
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys
from torch import nn

from d2lite.utils import comm
from d2lite.utils.file_io import PathManager

from . import catalog as _catalog  # noqa: F401  (registers catalog:// in PathManager)
from .c2_model_loading import align_and_update_state_dicts
from .compatibility import CheckpointError, shape_table

__all__ = ["DetectionCheckpointer", "CheckpointError", "split_load_options"]

_LAST_CHECKPOINT = "last_checkpoint"
_NUMBERED = re.compile(r"_(\d+)\.pth$")

logger = logging.getLogger(__name__)

_C2_AUTHORS = ("Caffe2", "Detectron")


def _is_remote(path: str) -> bool:
    return "://" in path


def _fsync_dir(dirname: str) -> None:
    """Persist a rename in ``dirname`` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write_fn: Any, binary: bool = True) -> None:
    """Write ``path`` via a temp file in the same directory + fsync + os.replace.

    An exception (or a kill) during ``write_fn`` leaves any previous ``path`` untouched;
    the temp file is removed on exceptions.
    """
    dirname = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=dirname)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        interrupt = _keyboard_interrupt_in_chain(e)
        if interrupt is not None and interrupt is not e:
            # Ctrl-C inside torch.save: its zip writer then fails while closing
            # ("unexpected pos ..."), hiding the interrupt. Report the interrupt.
            raise interrupt.with_traceback(interrupt.__traceback__) from None
        raise
    _fsync_dir(dirname)


def _keyboard_interrupt_in_chain(error: BaseException) -> Optional[KeyboardInterrupt]:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_LOAD_OPTIONS = ("matching_heuristics",)
"""Query options of a checkpoint path, e.g. ``model.pth?matching_heuristics=True``."""


def _parse_bool(value: str, key: str, path: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"Checkpoint path {path!r}: query option {key}={value!r} must be True or False.")


def split_load_options(path: str) -> Tuple[str, Dict[str, Any]]:
    """Split detectron2's query options off a checkpoint path.

    ``"out/model.pth?matching_heuristics=True"`` -> ``("out/model.pth", {"matching_heuristics": True})``.
    A path without ``?``, or an existing local file whose name contains ``?``, has no options.

    Raises:
        ValueError: for a query that is not ``key=value&...``, an unknown or repeated key
            (naming them and the supported ones), or a value that is not True/False.
    """
    if "?" not in path or os.path.isfile(path):
        return path, {}
    base, _, query = path.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise ValueError(
            f"Checkpoint path {path!r}: cannot parse the query {query!r} ({e}); write options as "
            f"'?key=value&key=value' with keys from {list(_LOAD_OPTIONS)}."
        ) from e
    keys = [k for k, _ in pairs]
    unknown = sorted({k for k in keys if k not in _LOAD_OPTIONS})
    if unknown:
        raise ValueError(
            f"Checkpoint path {path!r}: unsupported query option(s) {unknown}; supported: {list(_LOAD_OPTIONS)}. "
            "(The query of a checkpoint path holds load options, as in detectron2; a URL that needs "
            "its own query must be downloaded first and given as a local path.)"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"Checkpoint path {path!r}: query option(s) {repeated} given more than once.")
    return base, {k: _parse_bool(v, k, path) for k, v in pairs}


def _strip_prefix(state_dict: Dict[str, Any], prefix: str) -> None:
    """In place: drop ``prefix`` from every key if *all* keys start with it."""
    keys = list(state_dict.keys())
    if not keys or not all(k.startswith(prefix) for k in keys):
        return
    for k in keys:
        state_dict[k[len(prefix) :]] = state_dict.pop(k)


class DetectionCheckpointer(Checkpointer):
    """Save/load a model and other checkpointables (optimizer, scheduler, trainer, EMA...).

    Differences from fvcore's :class:`Checkpointer`:

    * saves are atomic: the checkpoint and the ``last_checkpoint`` tag are written to a
      temp file in ``save_dir``, fsynced and renamed, so an interrupted save never
      corrupts the previous checkpoint;
    * only the main process saves by default (``save_to_disk=None``);
    * loads detectron2 model-zoo ``.pkl`` files (``{"model": numpy arrays,
      "__author__": ...}``) and Caffe2/Detectron ``.pkl`` files (blob names like
      ``res2_0_branch2a_w``, converted to d2lite names and matched by suffix);
    * paths may be ``detectron2://``, ``catalog://`` or ``https://`` URLs, or use any
      prefix of a handler registered with :data:`d2lite.utils.file_io.PathManager`;
    * as in detectron2, a path may end with query options:
      ``model.pth?matching_heuristics=True`` loads ``model.pth`` and matches its weight
      names to the model's by suffix (see :func:`align_and_update_state_dicts`), e.g. a
      backbone checkpoint (``res2.0.conv1.weight``) into a detector
      (``backbone.bottom_up.res2.0.conv1.weight``). Unknown options are an error.

    A DDP/DataParallel model is unwrapped: state-dict keys never start with "module.".

    Example::

        checkpointer = DetectionCheckpointer(model, "output", optimizer=opt, trainer=trainer)
        checkpointer.resume_or_load("detectron2://ImageNetPretrained/MSRA/R-50.pkl", resume=True)
        checkpointer.save("model_0000999", iteration=999)
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        """
        Args:
            model: the model (may be wrapped in DDP/DataParallel).
            save_dir: directory of checkpoints and the ``last_checkpoint`` tag. "" disables
                saving.
            save_to_disk: whether :meth:`save` writes; defaults to "only on the main process".
            checkpointables: objects with ``state_dict()``/``load_state_dict()``, saved under
                their keyword names.
        """
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.path_manager = PathManager
        self.logger = logger
        self._load_options: Dict[str, Any] = {}  # query options of the path being loaded

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Atomically write ``{save_dir}/{name}.pth`` and tag it as the last checkpoint.

        Args:
            name: file name without ".pth", e.g. "model_0004999".
            kwargs: extra data stored in the checkpoint (e.g. ``iteration=4999``) and
                returned by :meth:`load`.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"Checkpoint name {name!r} must not contain a directory part.")
        self.logger.info(f"Saving checkpoint to {save_file}")
        if _is_remote(self.save_dir):
            with self.path_manager.open(save_file, "wb") as f:
                torch.save(data, f)
        else:
            os.makedirs(self.save_dir, exist_ok=True)
            _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write ``last_filename_basename`` into ``{save_dir}/last_checkpoint``."""
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        if _is_remote(self.save_dir):
            with self.path_manager.open(save_file, "w") as f:
                f.write(last_filename_basename)
            return
        _atomic_write(save_file, lambda f: f.write(last_filename_basename), binary=False)

    # ---------------------------------------------------------------- resuming
    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds something to resume from: a ``last_checkpoint``
        tag or a ``.pth`` file."""
        if not self.save_dir:
            return False
        if _is_remote(self.save_dir):
            return super().has_checkpoint()
        return os.path.exists(os.path.join(self.save_dir, _LAST_CHECKPOINT)) or bool(self._checkpoint_files())

    def get_checkpoint_file(self) -> str:
        """The checkpoint that ``last_checkpoint`` names, or "" when the tag is missing,
        empty, unreadable or names a missing file."""
        if _is_remote(self.save_dir):
            return super().get_checkpoint_file()
        path, _ = self._read_last_checkpoint()
        return path or ""

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume`` and something to resume from in ``save_dir``: load the model
        and all checkpointables from the checkpoint ``last_checkpoint`` names, or, when
        that tag is empty, unreadable or names a missing or unreadable file, from the
        newest checkpoint in ``save_dir`` that loads (highest iteration in the name,
        ``*_final.pth`` first, then the newest file), with a warning naming what was
        skipped and why. Otherwise load only the model from ``path`` (``""``: nothing).

        Raises:
            CheckpointError: nothing in ``save_dir`` can be read; the message names the
                problem of ``last_checkpoint`` and of each checkpoint file.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        if _is_remote(self.save_dir):
            return super().resume_or_load(path, resume=True)
        tagged, problem = self._read_last_checkpoint()
        skipped = [f"{_LAST_CHECKPOINT} {problem}"] if problem else []
        candidates = ([tagged] if tagged else []) + [f for f in self._checkpoint_files() if f != tagged]
        for candidate in candidates:
            try:
                checkpoint = self._load_file(candidate)
            except Exception as e:  # any damage: try the next one, and say why
                reason = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
                first = str(reason).split(". ")[0]
                skipped.append(f"{os.path.basename(candidate)} cannot be read ({type(reason).__name__}: {first})")
                continue
            if skipped:
                self.logger.warning(
                    f"Resuming from {candidate}, the newest checkpoint in {self.save_dir} that loads. Skipped: "
                    + "; ".join(skipped)
                )
            return self._load_checkpoint(candidate, checkpoint, None)
        raise CheckpointError(
            f"nothing in {self.save_dir} can be resumed from: "
            + "; ".join(skipped or [f"no {_LAST_CHECKPOINT} and no .pth file"])
        )

    def _read_last_checkpoint(self) -> Tuple[Optional[str], Optional[str]]:
        """(path named by ``last_checkpoint`` if it is a file, problem of the tag or None)."""
        tag = os.path.join(self.save_dir, _LAST_CHECKPOINT)
        if not os.path.exists(tag):
            return None, "does not exist" if self._checkpoint_files() else None
        try:
            with open(tag, "rb") as f:
                name = f.read(4096).decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, "is not text (damaged)"
        except OSError as e:
            return None, f"cannot be read ({e})"
        if not name:
            return None, "is empty"
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            return None, f"names {name}, which does not exist"
        return path, None

    def _checkpoint_files(self) -> List[str]:
        """The ``.pth`` files of ``save_dir``, newest first: ``*_final.pth``, then by the
        iteration in the name (``model_0000199.pth``), then by modification time."""
        if not os.path.isdir(self.save_dir):
            return []
        files = [os.path.join(self.save_dir, n) for n in os.listdir(self.save_dir) if n.endswith(".pth")]

        def newest_first(path: str):
            name = os.path.basename(path)
            match = _NUMBERED.search(name)
            rank = float("inf") if name.endswith("_final.pth") else int(match.group(1)) if match else -1
            return (rank, os.path.getmtime(path), name)

        return sorted((f for f in files if os.path.isfile(f)), key=newest_first, reverse=True)

    # ----------------------------------------------------------------- loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load model (and checkpointables) from a file or URL.

        Args:
            path: local file, URL, ``detectron2://...``, ``catalog://...`` or a path of a
                handler registered with the PathManager, optionally followed by query
                options (``?matching_heuristics=True``, see the class docstring); "" loads
                nothing.
            checkpointables: names of checkpointables to load; None loads all present.

        Returns:
            The remaining checkpoint data (e.g. ``iteration`` given to :meth:`save`).

        Raises:
            ValueError: an unknown query option (named in the message).
            FileNotFoundError: the file does not exist.
        """
        if not path:
            return super().load(path, checkpointables)
        path, self._load_options = split_load_options(path)
        try:
            local = path if os.path.isfile(path) else self.path_manager.get_local_path(path)
            if comm.get_world_size() > 1:
                return self._load_distributed(local, checkpointables)
            if not os.path.isfile(local):
                raise FileNotFoundError(
                    f"Checkpoint {path} not found (resolved to {local}). Check "
                    "train.init_checkpoint / the path given to the checkpointer."
                )
            return self._load_checkpoint(local, self._load_file(local), checkpointables)
        finally:
            self._load_options = {}

    def _load_checkpoint(
        self, path: str, checkpoint: Dict[str, Any], checkpointables: Optional[List[str]]
    ) -> Dict[str, Any]:
        """Load the model and ``checkpointables`` (None: all present) from ``checkpoint``,
        the data read from ``path``; return what is left (as fvcore's ``load``)."""
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """As fvcore's, but the parameters whose shapes differ are listed in one table."""
        if incompatible.incorrect_shapes:
            self.logger.warning(
                f"{len(incompatible.incorrect_shapes)} parameter(s) of the checkpoint have another shape "
                "than in the model and were not loaded:\n"
                + shape_table(incompatible.incorrect_shapes, ["parameter", "checkpoint", "model"])
            )
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}  # in the table, not "missing" again
        missing = [k for k in incompatible.missing_keys if k not in reshaped]
        super()._log_incompatible_keys(incompatible._replace(incorrect_shapes=[], missing_keys=missing))

    def _load_distributed(self, path: str, checkpointables: Optional[List[str]]) -> Dict[str, Any]:
        has_file = os.path.isfile(path)
        all_has_file = comm.all_gather(has_file)
        if not all_has_file[0]:
            raise OSError(f"Checkpoint {path} not found on the main worker.")
        need_sync = not all(all_has_file)
        if need_sync:
            logger.warning(
                f"Not all workers can read checkpoint {path}; workers without it "
                "receive the model states from the main worker."
            )
        ret = super().load(path if has_file else "", checkpointables)
        if need_sync:
            logger.info("Broadcasting model states from main worker ...")
            for tensor in self.model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        return ret

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Read a checkpoint into ``{"model": state_dict, ...}``.

        ``.pkl``: detectron2 model zoo (has "model" and "__author__") or Caffe2/Detectron
        (blob dict, optionally under "blobs"; marked for name conversion). Anything else
        is read with ``torch.load``; a bare state dict is wrapped as ``{"model": ...}``.
        ``matching_heuristics=True`` in the path's query marks the data for suffix
        matching (Caffe2 files always are).
        """
        try:
            if filename.endswith(".pkl"):
                with self.path_manager.open(filename, "rb") as f:
                    data = pickle.load(f, encoding="latin1")
            else:
                data = torch.load(filename, map_location=torch.device("cpu"), weights_only=False)
        except Exception as e:
            raise RuntimeError(
                f"Cannot read checkpoint file {filename}: {type(e).__name__}: {e}. "
                "The file may be truncated or not a checkpoint."
            ) from e
        if not isinstance(data, dict):
            raise ValueError(
                f"Checkpoint {filename} holds a {type(data).__name__}, expected a dict "
                "(a state dict or {'model': state_dict, ...})."
            )

        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
            else:
                if "blobs" in data:  # Detectron detection models; ImageNet models are flat
                    data = data["blobs"]
                data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
                return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        elif "model" not in data:
            data = {"model": data}
        if self._load_options.get("matching_heuristics", False):
            data["matching_heuristics"] = True
        return data

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        model_sd = checkpoint["model"]
        if not isinstance(model_sd, dict):
            raise ValueError(
                f"checkpoint['model'] is a {type(model_sd).__name__}, expected a state dict (name -> tensor)."
            )
        self._convert_ndarray_to_tensor(model_sd)
        _strip_prefix(model_sd, "module.")
        author = checkpoint.get("__author__", None)
        if checkpoint.get("matching_heuristics", False) or author in _C2_AUTHORS:
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), model_sd, c2_conversion=author in _C2_AUTHORS
            )
        incompatible = super()._load_model(checkpoint)

        # pixel_mean/std are set from the config; old checkpoints may lack them.
        model_buffers = dict(self.model.named_buffers(recurse=False))
        for k in ("pixel_mean", "pixel_std"):
            if k in model_buffers and k in incompatible.missing_keys:
                incompatible.missing_keys.remove(k)
        # cell anchors are non-persistent buffers now; old checkpoints still have them.
        for k in list(incompatible.unexpected_keys):
            if "anchor_generator.cell_anchors" in k:
                incompatible.unexpected_keys.remove(k)
        return incompatible
