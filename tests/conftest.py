"""Fixtures shared by the suite, and GPU gating in one place.

A test that needs accelerator devices carries the ``gpu`` marker: ``@pytest.mark.gpu`` for one
device, ``pytest.mark.gpu(devices=n)`` for n (``gpu_worlds`` adds it per world size). At collection,
``pytest_collection_modifyitems`` counts the devices and skips, with the reason, every test that
needs more than are present; nothing else in the suite decides whether a GPU test runs.
"""

import pytest
import torch
import torch.distributed as dist

from compile_ops.testing.pool import close_all_pools, get_pool


def accelerator_backend() -> str | None:
    """The collective backend of this machine's accelerator (NCCL for CUDA, XCCL for XPU), from
    torch's own device -> backend map; None without an accelerator or where it has none of its
    own (the CPU's gloo is not a GPU test)."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return None
    backend = dist.Backend.default_device_backend_map.get(accelerator.type)
    return None if backend == dist.Backend.default_device_backend_map["cpu"] else backend


def accelerator_count() -> int:
    """Devices a GPU test can put one rank on each of; 0 where none is usable."""
    return torch.accelerator.device_count() if accelerator_backend() is not None else 0


def gpu_worlds(*sizes: int) -> list:
    """World sizes for GPU tests, one device per rank; each needs that many devices."""
    return [pytest.param(n, id=f"w{n}", marks=pytest.mark.gpu(devices=n)) for n in sizes]


def _devices_needed(item: pytest.Item) -> int:
    return max((m.kwargs.get("devices", 1) for m in item.iter_markers("gpu")), default=0)


def pytest_collection_modifyitems(config, items):
    present, backend = accelerator_count(), accelerator_backend()
    if backend is None:
        here = "none is present here"
    else:
        here = (
            f"{present} {torch.accelerator.current_accelerator().type} device(s) here ({backend})"
        )
    for item in items:
        needed = _devices_needed(item)
        if needed > present:
            reason = f"needs {needed} accelerator device(s) with a collective backend; {here}"
            item.add_marker(pytest.mark.skip(reason=reason))


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
