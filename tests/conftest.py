"""Fixtures shared by the tests of several packages."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes tests/helpers.py importable

from helpers import REPO_ROOT  # noqa: E402


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """Where the built-in datasets live for the tests ($D2LITE_DATASETS, default ./datasets)."""
    return Path(os.environ.get("D2LITE_DATASETS", REPO_ROOT / "datasets")).resolve()
