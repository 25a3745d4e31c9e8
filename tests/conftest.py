import pytest
import torch

from compile_ops.testing.pool import close_all_pools, get_pool


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _needs(gpus: int) -> str:
    return "needs a CUDA GPU and NCCL" if gpus == 1 else f"needs {gpus} CUDA GPUs and NCCL"


requires_gpu = pytest.mark.skipif(gpu_count() < 1, reason=_needs(1))


def gpu_worlds(*sizes: int) -> list:
    """World sizes for NCCL tests, one GPU per rank; each skips where fewer GPUs are present."""
    return [
        pytest.param(n, id=f"w{n}", marks=pytest.mark.skipif(gpu_count() < n, reason=_needs(n)))
        for n in sizes
    ]


@pytest.fixture(scope="session", autouse=True)
def _close_pools():
    yield
    close_all_pools()


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws the same random inputs on every run, so a tolerance never flakes."""
    torch.manual_seed(0)


@pytest.fixture
def world():
    """``world(n)`` -> the shared gloo pool of n ranks (started once per session)."""
    return lambda n, backend="gloo": get_pool(n, backend)


def pytest_terminal_summary(terminalreporter):
    """How many examples each fuzz test drew (recorded by tests/test_fuzz.py)."""
    reports = terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
    counts = [
        (r.nodeid, value)
        for r in reports
        if r.when == "call"
        for key, value in r.user_properties
        if key == "examples"
    ]
    if counts:
        terminalreporter.write_sep("-", f"fuzz examples: {sum(v for _, v in counts)} in all")
        for nodeid, value in counts:
            terminalreporter.write_line(f"{value:6d}  {nodeid}")
