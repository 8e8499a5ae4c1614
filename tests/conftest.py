import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def corpus_glob() -> str:
    """A small real corpus on every machine: the stdlib's json and email packages (~0.5 MB)."""
    return str(Path(sysconfig.get_paths()["stdlib"]) / "email" / "*.py")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")
