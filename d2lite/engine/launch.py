"""Start (multi-process / multi-machine) training: ``launch(main_func, ...)``.

Same semantics as ``detectron2.engine.launch``: ``num_gpus_per_machine`` processes are
spawned per machine, each calls ``torch.distributed.init_process_group`` (NCCL on CUDA,
gloo on CPU) and then ``main_func(*args)``. On a CPU-only machine several gloo
processes can be spawned (useful for testing data-parallel code).

When the script is started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
set in the environment), nothing is spawned: this process joins the group with
``init_method="env://"`` and runs ``main_func``. Likewise under SLURM's ``srun`` with
more than one task (one task per GPU, or per CPU process): rank, local rank, world size
and the master address and port come from the SLURM variables (:func:`slurm_env`).

Stop signals (see :mod:`d2lite.engine.preemption`): a spawned process that stopped on a
signal exits with ``128 + signal``; the parent forwards SIGINT/SIGTERM/SIGUSR1/SIGUSR2
it receives to its children, waits for all of them and raises
:class:`~d2lite.engine.preemption.TrainingInterrupted` with that signal.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lite.utils import comm

from .preemption import TrainingInterrupted

__all__ = ["DEFAULT_TIMEOUT", "launch", "torchrun_env", "slurm_env", "slurm_first_host"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Signals the parent of spawned processes passes on to them (each child handles or dies
# of them as configured), and how long the others may take to finish after one child
# stopped on a signal (they stop after the same iteration).
_FORWARDED_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n)
)
_STOP_GRACE_SECONDS = 120.0

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


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM host list, e.g. ``"gpu[003-005,9],cpu1"`` -> ``"gpu003"``
    (what ``scontrol show hostnames`` prints first), without calling scontrol."""
    nodelist = nodelist.strip()
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first entry
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    entry = nodelist[:end]
    if not entry:
        raise ValueError(f"Empty SLURM node list {nodelist!r}.")
    # each [a-b,c] range becomes its first value (zero padding kept)
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], entry)
    if "[" in host or "]" in host:
        raise ValueError(f"Cannot parse the SLURM node list {nodelist!r}.")
    return host


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node ``node_id`` from ``SLURM_TASKS_PER_NODE``, e.g. ``"2(x3),1"``."""
    counts: List[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"Malformed SLURM_TASKS_PER_NODE={tasks_per_node!r}.")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise ValueError(f"SLURM_NODEID={node_id} is not in SLURM_TASKS_PER_NODE={tasks_per_node!r}.")
    return counts[node_id]


def slurm_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Dict[str, Any]]:
    """
    Parse the variables of a task started by SLURM's ``srun`` (as MMEngine's slurm launcher).

    Args:
        environ: defaults to ``os.environ``.

    Returns:
        None unless SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS are set with more than one
        task; else a dict with int ``rank`` (SLURM_PROCID), ``local_rank`` (SLURM_LOCALID),
        ``world_size`` (SLURM_STEP_NUM_TASKS, else SLURM_NTASKS), ``local_world_size``
        (this node's entry of SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE at
        SLURM_NODEID, else SLURM_NTASKS_PER_NODE, else the world size), str ``master_addr``
        (MASTER_ADDR, else the first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST /
        SLURM_NODELIST) and int ``master_port`` (MASTER_PORT, else
        ``10000 + SLURM_JOB_ID % 20000``, the same for all tasks of a job).
    """
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")):
        return None
    names = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_NODEID", "SLURM_JOB_ID")
    try:
        world_size = int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
        if world_size <= 1:
            return None
        rank, local_rank = int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"])
        node_id = int(env.get("SLURM_NODEID", "0"))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE"))
        if per_node:
            local_world_size = _tasks_on_node(per_node, node_id)
        else:
            local_world_size = int(env.get("SLURM_NTASKS_PER_NODE", world_size))
        if "MASTER_PORT" in env:
            port = int(env["MASTER_PORT"])
        elif "SLURM_JOB_ID" in env:
            port = 10000 + int(env["SLURM_JOB_ID"]) % 20000
        else:
            raise ValueError("neither MASTER_PORT nor SLURM_JOB_ID is set")
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"Malformed SLURM environment ({e}): " + ", ".join(f"{k}={env.get(k)!r}" for k in names)
        ) from e
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    else:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("SLURM task without SLURM_JOB_NODELIST / SLURM_NODELIST (or MASTER_ADDR) to find rank 0.")
        addr = slurm_first_host(nodelist)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        raise ValueError(
            f"Inconsistent SLURM variables: rank {rank}, local rank {local_rank}, world size {world_size}, "
            f"tasks on this node {local_world_size}."
        )
    return {
        "rank": rank,
        "local_rank": local_rank,
        "world_size": world_size,
        "local_world_size": local_world_size,
        "master_addr": addr,
        "master_port": port,
    }


def _tcp_url(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


@contextlib.contextmanager
def _forward_signals(processes: List[Any]) -> Iterator[None]:
    """While waiting for spawned ``processes``, pass the stop signals this process gets on to them."""

    def forward(signum: int, frame: Any) -> None:
        for p in processes:
            if p.is_alive():
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    previous = {}
    try:
        for sig in _FORWARDED_SIGNALS:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: nothing to forward from
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_stopped_children(processes: List[Any]) -> None:
    """Return when a child exits; if it stopped on a signal (exit status 128 + signal),
    first give the others time to finish: they stop after the same iteration, once the
    checkpoint is written (torch's join would terminate them at once)."""
    multiprocessing.connection.wait([p.sentinel for p in processes])
    codes = [p.exitcode for p in processes if p.exitcode is not None]
    if any(TrainingInterrupted.from_exit_code(code, _FORWARDED_SIGNALS) for code in codes):
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))


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
    env, launcher, init_method, device_index = torchrun_env(), "torchrun", "env://", None
    if env is None:
        env, launcher = slurm_env(), "srun"
        if env is not None:
            init_method = _tcp_url(env["master_addr"], env["master_port"])
            count = torch.cuda.device_count()
            if count and count < env["local_world_size"]:  # each task sees only its own GPU(s)
                device_index = env["local_rank"] % count
            if env["rank"] == 0:  # printed before logging is set up: a warning reaches stderr
                logger.warning(
                    f"SLURM task 0 of {env['world_size']}: waiting for the other tasks at {init_method} "
                    "(start them all with srun; SLURM_NTASKS must be the number of processes started)."
                )
    if env is not None:
        expected = num_machines * num_gpus_per_machine
        if expected not in (1, env["world_size"]):
            logger.warning(
                f"Started by {launcher} with {env['world_size']} processes; ignoring "
                f"num_gpus_per_machine={num_gpus_per_machine} x num_machines={num_machines}."
            )
        owns_group = env["world_size"] > 1 and not (dist.is_available() and dist.is_initialized())
        if owns_group:
            _init_worker(
                init_method=init_method,
                world_size=env["world_size"],
                rank=env["rank"],
                local_rank=env["local_rank"],
                num_processes_per_machine=env["local_world_size"],
                timeout=timeout,
                device_index=device_index,
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

        context = mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
            start_method="spawn",
            join=False,
        )
        with _forward_signals(context.processes):
            _wait_for_stopped_children(context.processes)
            try:
                while not context.join():  # a failure terminates the other processes
                    pass
            except mp.ProcessExitedException as e:
                stopped = TrainingInterrupted.from_exit_code(e.exit_code, _FORWARDED_SIGNALS)
                if stopped is None:
                    raise
                raise stopped from None
    else:
        main_func(*args)


def _share_cpu_cores(num_processes_per_machine: int) -> None:
    """Give each of the machine's CPU training processes an equal share of the cores as
    intra-op threads (as torchrun sets OMP_NUM_THREADS=1 per worker), unless the user set
    ``OMP_NUM_THREADS``: by default every process would start one thread per core, and
    ``n`` processes would oversubscribe the cores ``n`` times."""
    if num_processes_per_machine <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // num_processes_per_machine)
    torch.set_num_threads(threads)  # (no log: a spawned process has no logger set up yet)


def _init_worker(
    init_method: str,
    world_size: int,
    rank: int,
    local_rank: int,
    num_processes_per_machine: int,
    timeout: timedelta,
    device_index: Optional[int] = None,
) -> None:
    has_gpu = torch.cuda.is_available()
    if has_gpu and device_index is None and num_processes_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"{num_processes_per_machine} processes per machine requested but only "
            f"{torch.cuda.device_count()} CUDA devices are visible."
        )
    if has_gpu:
        torch.cuda.set_device(local_rank if device_index is None else device_index)
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
    if not torch.cuda.is_available():  # torchrun and srun set the threads (or CPU affinity) themselves
        _share_cpu_cores(num_gpus_per_machine)
    _init_worker(dist_url, world_size, global_rank, local_rank, num_gpus_per_machine, timeout)
    try:
        main_func(*args)
    except TrainingInterrupted as e:
        sys.exit(e.exit_code)  # the parent sees 128 + signal (no traceback: the log says why)
    finally:
        dist.destroy_process_group()
