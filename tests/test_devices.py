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
for _ in range(8):
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
    on, off = results["on"][1][1:], results["off"][1][1:]
    # without the setting every allocation faults its pages in afresh
    assert all(f > 0.5 * pages for f in off), results
    # with it, the freed pages are reused. On a busy shared machine glibc sometimes grows the heap
    # again (measured once: 65543, 0, 65536, 65536, 0), so require reuse in at least half of the
    # allocations after the first and at most 3/4 of the faults without the setting
    assert sum(f < 0.05 * pages for f in on) >= len(on) // 2, results
    assert sum(on) <= 0.75 * sum(off), results


def test_keep_freed_memory_can_be_opted_out(monkeypatch) -> None:
    monkeypatch.setenv("FEDCOND_KEEP_FREED_MEMORY", "0")
    assert keep_freed_cpu_memory() is False
