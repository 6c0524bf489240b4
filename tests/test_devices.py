"""Device resolution and the CPU allocator setting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from fedcond.devices import keep_freed_cpu_memory, resolve_device


def test_auto_resolves_to_an_available_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc setting"
)
def test_keep_freed_memory_stops_page_faults_on_reallocation() -> None:
    # in a fresh process: allocate and free a 256 MiB tensor repeatedly and count minor page
    # faults; with the setting the pages are reused, without it each allocation faults them in
    script = """
import resource, sys, torch
from fedcond.devices import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "on" else False
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""
    results = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        applied, *faults = out.stdout.split()
        results[mode] = (applied == "True", [int(f) for f in faults])
    pages = 256 * 2**20 // 4096
    assert results["on"][0] is True
    # the first allocations grow the heap; from then on the freed pages are reused
    assert all(f < 0.05 * pages for f in results["on"][1][-3:]), results
    assert all(f > 0.5 * pages for f in results["off"][1][-3:]), results


def test_keep_freed_memory_can_be_opted_out(monkeypatch) -> None:
    monkeypatch.setenv("FEDCOND_KEEP_FREED_MEMORY", "0")
    assert keep_freed_cpu_memory() is False
