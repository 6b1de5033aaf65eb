import logging
import os

import pytest

from d2lite.utils.logger import log_every_n, log_first_n, setup_logger


@pytest.fixture
def fresh_logger_name(request):
    name = "d2lite_test_" + request.node.name
    yield name
    lg = logging.getLogger(name)
    for h in list(lg.handlers):
        lg.removeHandler(h)


def test_rank0_console_and_file(tmp_path, fresh_logger_name):
    lg = setup_logger(str(tmp_path), distributed_rank=0, name=fresh_logger_name, color=False)
    assert lg.name == fresh_logger_name and lg.level == logging.DEBUG
    assert len(lg.handlers) == 2
    # idempotent: the same call adds no handler
    assert setup_logger(str(tmp_path), distributed_rank=0, name=fresh_logger_name, color=False) is lg
    assert len(lg.handlers) == 2
    lg.info("hello file")
    with open(tmp_path / "log.txt") as f:
        content = f.read()
    assert "hello file" in content and fresh_logger_name in content


def test_other_rank_writes_rank_file_only(tmp_path, fresh_logger_name):
    lg = setup_logger(str(tmp_path), distributed_rank=2, name=fresh_logger_name)
    assert len(lg.handlers) == 1  # no console on rank > 0
    lg.warning("from rank 2")
    assert os.listdir(tmp_path) == ["log.txt.rank2"]
    assert "from rank 2" in (tmp_path / "log.txt.rank2").read_text()


def test_explicit_file_name(tmp_path, fresh_logger_name):
    lg = setup_logger(str(tmp_path / "run.log"), name=fresh_logger_name)
    lg.info("x")
    assert (tmp_path / "run.log").exists()


def test_log_first_n_and_every_n(fresh_logger_name):
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    lg = logging.getLogger(fresh_logger_name)
    lg.setLevel(logging.INFO)
    lg.addHandler(H())
    for i in range(5):
        log_first_n(logging.INFO, f"first {i}", n=2, name=fresh_logger_name)
    for i in range(5):
        log_every_n(logging.INFO, f"every {i}", n=2, name=fresh_logger_name)
    assert records == ["first 0", "first 1", "every 0", "every 2", "every 4"]
