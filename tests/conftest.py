import os
import sys
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")


def _triton_interpreter_without_gpu() -> None:
    """Without a GPU, the fused Triton kernels (tests/test_kernels_triton.py) run in Triton's
    interpreter. It must be on before triton is first imported (lightning imports it while
    other test modules are collected): triton.language decides at import whether its own
    helpers are compiled or interpreted. Harmless to the other tests: on CPU nothing else
    runs Triton kernels. An explicit TRITON_INTERPRET setting wins."""
    if "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_triton_interpreter_without_gpu()


@pytest.fixture(scope="session")
def corpus_glob() -> str:
    """A small real corpus on every machine: the stdlib's json and email packages (~0.5 MB)."""
    return str(Path(sysconfig.get_paths()["stdlib"]) / "email" / "*.py")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest, immune to a busy 2-core machine, and leaves the
    other core to whatever else runs. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
