"""Start (multi-process / multi-machine) training: ``launch(main_func, ...)``.

Same semantics as ``detectron2.engine.launch``: ``num_gpus_per_machine`` processes are
spawned per machine, each calls ``torch.distributed.init_process_group`` (NCCL on CUDA,
gloo on CPU) and then ``main_func(*args)``. On a CPU-only machine several gloo
processes can be spawned (useful for testing data-parallel code).

When the script is started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
set in the environment), nothing is spawned: this process joins the group with
``init_method="env://"`` and runs ``main_func``.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lite.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "torchrun_env"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

logger = logging.getLogger(__name__)


def _find_free_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Binding to port 0 will cause the OS to find an available port for us
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # NOTE: there is still a chance the port could be taken by other processes.
    return port


def torchrun_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Dict[str, int]]:
    """
    Parse the variables set by torchrun / ``torch.distributed.run``.

    Args:
        environ: defaults to ``os.environ``.

    Returns:
        None if this process was not started by torchrun (any of RANK, WORLD_SIZE,
        LOCAL_RANK missing), else a dict with int ``rank``, ``world_size``,
        ``local_rank`` and ``local_world_size`` (``LOCAL_WORLD_SIZE``, defaulting to
        the world size).
    """
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    try:
        parsed = {
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env["LOCAL_RANK"]),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        }
    except ValueError as e:
        raise ValueError(
            "Malformed torchrun environment variables: "
            + ", ".join(f"{k}={env.get(k)!r}" for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))
        ) from e
    if not (0 <= parsed["rank"] < parsed["world_size"]) or not (
        0 <= parsed["local_rank"] < parsed["local_world_size"] <= parsed["world_size"]
    ):
        raise ValueError(f"Inconsistent torchrun environment variables: {parsed}")
    return parsed


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """
    Launch multi-process or distributed training.

    Args:
        main_func: a function that will be called by ``main_func(*args)``; with more
            than one process it must be picklable (defined at module level).
        num_gpus_per_machine: number of processes per machine (one per GPU with CUDA;
            any number of gloo processes on CPU).
        num_machines: the total number of machines.
        machine_rank: the rank of this machine.
        dist_url: url to connect to for distributed jobs, including protocol
            e.g. "tcp://127.0.0.1:8686". Can be set to "auto" to automatically select
            a free port on localhost (single machine only).
        args: arguments passed to main_func.
        timeout: timeout of the distributed workers.
    """
    env = torchrun_env()
    if env is not None:
        expected = num_machines * num_gpus_per_machine
        if expected != env["world_size"]:
            logger.warning(
                f"Started by torchrun with WORLD_SIZE={env['world_size']}; ignoring "
                f"num_gpus_per_machine={num_gpus_per_machine} x num_machines={num_machines}."
            )
        owns_group = env["world_size"] > 1 and not (dist.is_available() and dist.is_initialized())
        if owns_group:
            _init_worker(
                init_method="env://",
                world_size=env["world_size"],
                rank=env["rank"],
                local_rank=env["local_rank"],
                num_processes_per_machine=env["local_world_size"],
                timeout=timeout,
            )
        try:
            main_func(*args)
        finally:
            if owns_group:
                dist.destroy_process_group()
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size > 1:
        if dist_url is None:
            raise ValueError("launch: dist_url is required for multi-process training (or 'auto').")
        if dist_url == "auto":
            if num_machines != 1:
                raise ValueError("dist_url=auto not supported in multi-machine jobs.")
            port = _find_free_port()
            dist_url = f"tcp://127.0.0.1:{port}"
        if num_machines > 1 and dist_url.startswith("file://"):
            logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")

        mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
            start_method="spawn",
        )
    else:
        main_func(*args)


def _init_worker(
    init_method: str,
    world_size: int,
    rank: int,
    local_rank: int,
    num_processes_per_machine: int,
    timeout: timedelta,
) -> None:
    has_gpu = torch.cuda.is_available()
    if has_gpu and num_processes_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"{num_processes_per_machine} processes per machine requested but only "
            f"{torch.cuda.device_count()} CUDA devices are visible."
        )
    if has_gpu:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend="NCCL" if has_gpu else "GLOO",
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception as e:
        logger.error(f"Process group URL: {init_method}")
        raise e

    # Setup the local process group.
    comm.create_local_process_group(num_processes_per_machine)
    # synchronize is needed here to prevent a possible timeout after calling init_process_group
    # See: https://github.com/facebookresearch/maskrcnn-benchmark/issues/172
    comm.synchronize()


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    _init_worker(dist_url, world_size, global_rank, local_rank, num_gpus_per_machine, timeout)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
