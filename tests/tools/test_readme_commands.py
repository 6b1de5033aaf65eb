"""The README's commands and every tool's ``--help`` examples run as written, in a fresh
copy of the repository.

The copy holds the repository's files (``git ls-files``) and a ``datasets`` link to the
data root, so the README's relative paths (``datasets/shapes/val``, ``output/...``) mean
what they mean in a fresh clone after the set-up commands. ``source .venv/bin/activate``
is done the way activation works: the virtualenv's ``bin`` (this interpreter's) first on
PATH. Each command line is given to bash exactly as written; only arguments that shrink
the work are appended where the command takes them (a 4-iteration schedule for training, evaluation on shapes_val_50,
``--num-iter 2`` for the benchmark), and the TensorBoard server gets a free port.

Not run here: ``make demo`` (its recipe, read with ``make -n demo``, is the first
training command below, run on the tiny schedule), ``make test``/``make test-quick``/
``make lint`` (CI runs them), ``python -m pytest ...`` (this suite), the README's
multi-process templates written with ``--config-file ...`` (``--num-gpus 8``,
``--num-machines 2``, ``torchrun``: they need GPUs or machines; ``--num-gpus 2`` on CPU
is tested in test_lazyconfig_train_net.py), and the commands of "Coming from
detectron2", which convert and train the user's own detectron2 YAML on COCO
(tools/convert_yacs_config.py's --help examples, run here, convert the copy of
detectron2's YAML in tests/config), and script files shown in a ```bash block that starts
with ``#!`` (the SLURM job script: it needs a cluster).
"""

import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List

import pytest
from helpers import EVAL_SMALL, REPO_ROOT

from d2lite.config import LazyConfig

pytestmark = [pytest.mark.slow, pytest.mark.onepass]

TOOLS = sorted(str(p.relative_to(REPO_ROOT / "tools")) for p in (REPO_ROOT / "tools").rglob("*.py"))
DEMO_TRAIN = "python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py"
_TRAIN_TINY = [
    "train.checkpointer.period=2",
    "train.log_period=1",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]


def _join_lines(lines: List[str]) -> List[str]:
    """Command lines: comments and blank lines dropped, ``\\`` continuations joined,
    whitespace normalised."""
    commands, current = [], ""
    for raw in lines:
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment, as bash reads it
        current = f"{current} {line}".strip()
        if current.endswith("\\"):
            current = current[:-1].strip()
        else:
            commands.append(" ".join(current.split()))
            current = ""
    return commands


# README sections whose commands are not run: they convert and train the user's own
# detectron2 YAML on COCO, which a fresh clone does not have.
USER_DATA_SECTIONS = ("Coming from detectron2",)


def readme_commands(skip_sections=USER_DATA_SECTIONS) -> List[str]:
    """The command lines of the README's ```bash blocks (also indented ones), in order,
    except those of ``skip_sections`` (``##``/``###`` headings)."""
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for section in re.split(r"^(?=#{2,3} )", text, flags=re.M):
        heading = section.splitlines()[0].lstrip("#").strip() if section.startswith("#") else ""
        if heading in skip_sections:
            continue
        blocks = re.findall(r"^([ \t]*)```bash\n(.*?)^\1```", section, flags=re.S | re.M)
        # A block that starts with "#!" is a script file (the SLURM job script), not commands to type.
        blocks = [block for _, block in blocks if not block.lstrip().startswith("#!")]
        commands += [c for block in blocks for c in _join_lines(block.splitlines())]
    return commands


def help_examples(help_text: str) -> List[str]:
    """The ``python tools/...`` example lines of a tool's --help output."""
    lines = help_text.splitlines()
    commands = []
    for i, line in enumerate(lines):
        if re.match(r"\s*(OMP_WAIT_POLICY=\S+ )?python tools/", line):
            block = [line]
            while block[-1].rstrip().endswith("\\"):
                block.append(lines[i + len(block)])
            commands.extend(_join_lines(block))
    return commands


def _not_run(command: str) -> bool:
    if command.startswith("make ") or command == "source .venv/bin/activate" or " -m pytest" in command:
        return True
    if "..." in command:  # a template: must be one of the multi-process lines
        assert re.search(r"--num-gpus|--num-machines|^torchrun ", command), f"README placeholder in: {command}"
        return True
    return False


def _shrink(command: str) -> List[str]:
    """Arguments appended to ``command`` to make it quick."""
    if "lazyconfig_train_net.py" in command:
        if "--eval-only" in command:
            return [] if "dataloader.test.dataset.names=" in command else [EVAL_SMALL]
        schedule = ["train.max_iter=6"] if "--resume" in command else ["train.max_iter=4"]
        # Only the demo run evaluates, as `make demo` does (its AP and images feed TensorBoard).
        return schedule + _TRAIN_TINY + ([EVAL_SMALL] if command == DEMO_TRAIN else ["dataloader.evaluator=None"])
    if "benchmark.py" in command:
        return ["--num-iter", "2", "--warmup", "1", "dataloader.train.total_batch_size=2"]
    return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh copy of the repository and the environment of its activated .venv."""
    root = tmp_path_factory.mktemp("clone") / "d2lite"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
            source = REPO_ROOT / name
            if source.is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)
    else:  # not a git checkout
        shutil.copytree(
            REPO_ROOT, root, ignore=shutil.ignore_patterns(".git", ".venv", "output", "datasets", "__pycache__")
        )
    data_root = Path(os.environ.get("D2LITE_DATASETS") or REPO_ROOT / "datasets").resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    (root / "datasets").symlink_to(data_root, target_is_directory=True)
    env = dict(os.environ)
    env.pop("D2LITE_DATASETS", None)  # the README's default: ./datasets
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = sys.prefix
    return root, env


def _run(clone, command: str, extra: List[str] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    root, env = clone
    line = command + "".join(f" {a}" for a in extra)
    return subprocess.run(["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def _check_tensorboard(clone, command: str) -> str:
    """Serve the demo run with the README's command; return "" or what is wrong."""
    root, env = clone
    port = _free_port()
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port {port} --host 127.0.0.1 --load_fast false"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin"
                with urllib.request.urlopen(f"{url}/scalars/tags", timeout=10) as r:
                    scalars = json.loads(r.read().decode())
                if scalars:
                    with urllib.request.urlopen(f"{url}/images/tags", timeout=10) as r:
                        images = json.loads(r.read().decode())
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                return f"tensorboard did not serve: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = {t for tags in scalars.values() for t in tags} | {t for tags in images.values() for t in tags}
    readme = (REPO_ROOT / "README.md").read_text()
    documented = ["loss/total_loss", "loss/loss_cls", "loss/loss_box_reg", "optim/lr", "test/bbox/AP"]
    documented += ["timing/time", "timing/data_time", "train/num_pos_anchors"]
    missing = [t for t in documented if t not in served or f"`{t}`" not in readme]
    missing += [p for p in ("train/gt_boxes_", "test/pred_boxes_") if not any(t.startswith(p) for t in served)]
    return f"tags missing (served or documented): {missing}; served: {sorted(served)}" if missing else ""


def _check_outputs(clone, command: str, proc: subprocess.CompletedProcess) -> str:
    """Command-specific checks after a successful run; "" if all is well."""
    root, _ = clone
    if "dump_config.py" in command:
        target = root / "my_config.yaml" if "--output my_config.yaml" in command else root / "stdout_config"
        if "--output" not in command:
            target = target.with_suffix(".yaml" if "--format yaml" in command else ".py")
            target.write_text(proc.stdout)
        try:
            LazyConfig.load(str(target))
        except Exception as e:
            return f"its output does not load back with LazyConfig.load: {e}"
    if "predict.py" in command and not (root / "predictions" / "predictions.json").is_file():
        return "no predictions/predictions.json"
    if "--eval-only" in command and "copypaste: AP" not in proc.stdout + proc.stderr:
        return "no AP table"
    return ""


def _help_text(tool: str, capsys, monkeypatch) -> str:
    """What ``python tools/<tool> --help`` prints (the tool's own entry point, in this process)."""
    folder, name = os.path.split(tool)
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tools" / folder))
    module = importlib.import_module(name[: -len(".py")])
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}", "--help"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        (getattr(module, "invoke_main", None) or module.main)()
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def test_readme_commands_and_tool_help_examples_run_as_written(clone, capsys, monkeypatch):
    root, _ = clone
    readme = readme_commands()
    examples = []
    for tool in TOOLS:
        found = help_examples(_help_text(tool, capsys, monkeypatch))
        assert found, f"tools/{tool} --help shows no example"
        examples += found
    assert "make demo" in readme and "make test" in readme
    assert DEMO_TRAIN in examples
    # `make demo` first, as in the README's Quick start: its recipe (make -n demo), with the
    # activated python; its training command is the --help example that trains the demo.
    demo = [DEMO_TRAIN]
    if shutil.which("make"):
        recipe = subprocess.run(["make", "-n", "demo"], cwd=root, capture_output=True, text=True).stdout
        steps = [c for c in _join_lines(recipe.splitlines()) if "tools/" in c]
        steps = [re.sub(r"^((\w+=\S+ )*)\.venv/bin/python ", r"\1python ", c) for c in steps]
        assert steps and re.sub(r"^(\w+=\S+ )*", "", steps[0]) in (
            DEMO_TRAIN,
            f"{DEMO_TRAIN} train.output_dir=output/retinanet_R_18_FPN_shapes",  # the config's own
            f"{DEMO_TRAIN} --resume train.output_dir=output/retinanet_R_18_FPN_shapes",  # make demo again continues
            f"{DEMO_TRAIN} --num-gpus 2 --resume train.output_dir=output/retinanet_R_18_FPN_shapes",  # 2 processes
        ), recipe
        demo += steps[1:]

    commands, seen = [], set()
    for command in demo + readme + examples:
        if command not in seen and not _not_run(command):
            commands.append(command)
            seen.add(command)
    failures = []
    for command in commands:
        if command.startswith("tensorboard "):
            problem = _check_tensorboard(clone, command)
            if problem:
                failures.append(f"$ {command}\n{problem}")
            continue
        start = time.perf_counter()
        # The export's self-check on 1 image (the tool's default is 4); options go before the overrides.
        proc = _run(
            clone, command.replace("export_model.py ", "export_model.py --check-images 1 ", 1), _shrink(command)
        )
        print(f"{time.perf_counter() - start:6.1f} s  {command}")  # shown with pytest -s
        problem = "" if proc.returncode == 0 else f"exit code {proc.returncode}"
        if not problem and "Traceback" in proc.stderr:
            problem = "a traceback"
        problem = problem or _check_outputs(clone, command, proc)
        if problem:
            failures.append(f"$ {command} {' '.join(_shrink(command))}\n{problem}\n{proc.stderr[-3000:]}")
    assert not failures, "\n\n".join(failures)
    assert any(c.startswith("tensorboard ") for c in commands)
