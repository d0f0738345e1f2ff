"""The CPU worker keeps freed memory for its next step (glibc mallopt) and hands it back when idle."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exhibits.store import Store
from renderer import cpu_memory
from tests.test_worker import wait_for

ROOT = Path(__file__).resolve().parents[1]
# huge pages would hide the faults counted here (a 64 MB block is 32 of them)
ENV = {**{k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}, "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.skipif(not cpu_memory.available(), reason="glibc's mallopt only")

_PROBE = r"""
import resource, sys
import torch
from renderer import cpu_memory

def rss_mb():
    return cpu_memory.resident_bytes() >> 20

if sys.argv[1] == "reuse":
    assert cpu_memory.reuse_freed_memory() and cpu_memory.mode() == "reuse"
faults = []
for i in range(12):  # what render steps do: activations of tens of MB made from each other, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16 << 20); b = a * 2; c = b + a; d = torch.ones(8 << 20)  # 3 x 64 MB + 32 MB
    del c, a, d, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
x = torch.ones(64 << 20)  # 256 MB
del x
held = rss_mb()
released = cpu_memory.release_freed_memory()
print(sum(faults[-6:]), held, rss_mb(), released)
"""


def _python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (malloc settings are per process); its standard output."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _probe(mode: str) -> tuple[int, int, int, bool]:
    faults, held, after, released = _python(_PROBE, mode).split()
    return int(faults), int(held), int(after), released == "True"


def test_freed_blocks_are_reused_without_page_faults_and_handed_back_on_request():
    sys_faults, sys_held, _, _ = _probe("system")
    reuse_faults, reuse_held, reuse_after, released = _probe("reuse")
    # glibc's defaults: every block is mmapped afresh, 57344 pages faulted in at every step
    assert sys_faults > 6 * 57344 * 0.9, sys_faults
    # reused: after the first steps, freed blocks take the next step's (now and then one block of a step still
    # comes from fresh heap, until freed neighbours have coalesced: at most 8192 faults in 20 runs here)
    assert reuse_faults < sys_faults // 10, (reuse_faults, sys_faults)
    # the 256 MB block stays with the process until it is handed back
    assert reuse_held - sys_held > 200, (reuse_held, sys_held)
    assert released and reuse_held - reuse_after > 200, (reuse_held, reuse_after)


def test_system_defaults_come_back_for_a_baseline_in_the_same_process():
    code = ("import resource, torch\nfrom renderer import cpu_memory\n"
            "cpu_memory.reuse_freed_memory(); torch.ones(16 << 20)\n"
            "assert cpu_memory.use_system_defaults() and cpu_memory.mode() == 'system'\n"
            "torch.ones(64 << 20)  # over the heap's free memory: mmapped again\n"
            "b = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; x = torch.ones(64 << 20); del x\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - b)")
    assert int(_python(code)) > 65536 * 0.9  # 256 MB faulted in afresh, as glibc does by default


def _run_worker(tmp_path: Path, stepwise_dir: Path, config: str) -> str:
    """A real worker process renders two pieces, goes idle and is stopped; returns its log."""
    data = tmp_path / "data"
    store = Store(data)
    jobs = [store.submit("quick", source="visitor", prompt_text=f"memory {i}") for i in range(2)]
    conf = tmp_path / "kiosk.toml"
    conf.write_text(config)
    env = {**ENV, "KIOSK_GENERATORS": "tests.plugins.stepwise"}
    proc = subprocess.Popen([sys.executable, "-m", "kiosk", "worker", "--config", str(conf), "--data", str(data),
                             "--exhibits", "quick", "--exhibit-dir", str(stepwise_dir), "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: all(store.get_job(j.id).status == "done" for j in jobs), 90, "both jobs")
        wait_for(lambda: [w["state"] for w in store.workers_alive()] == ["idle"], 30, "the worker going idle")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
        store.close()
    return out


def test_the_cpu_worker_reuses_memory_and_hands_it_back_when_idle(tmp_path, stepwise_dir):
    out = _run_worker(tmp_path, stepwise_dir, "[show]\n")
    assert "freed memory is kept for the next step" in out, out
    assert "freed memory handed back (idle)" in out, out


def test_the_setting_turns_it_off_and_is_checked(tmp_path, stepwise_dir):
    from exhibits.show import ConfigError, load_show

    out = _run_worker(tmp_path, stepwise_dir, "[show]\ncpu_memory_reuse = false\n")
    assert "freed memory" not in out, out
    conf = tmp_path / "bad.toml"
    conf.write_text('[show]\ncpu_memory_reuse = "yes"\n')
    with pytest.raises(ConfigError, match="cpu_memory_reuse"):
        load_show(conf)


def test_large_blocks_still_come_in_other_threads():
    """With mmap off, glibc's per-thread arenas (64 MB heaps) must still serve larger blocks: a frame writer or a
    loader thread allocating hundreds of MB gets them."""
    code = ("import threading, numpy as np, torch\nfrom renderer import cpu_memory\n"
            "assert cpu_memory.reuse_freed_memory()\nout = []\n"
            "def work():\n"
            "    for _ in range(3):\n"
            "        x = torch.ones(64 << 20); out.append(float(x.sum())); del x\n"
            "    out.append(int(np.ones(1 << 28, dtype=np.uint8).sum()))\n"
            "t = threading.Thread(target=work); t.start(); t.join(); print(out)")
    assert _python(code).strip() == str([float(64 << 20)] * 3 + [1 << 28])
