"""The CPU sampler on real processes: a spinning one is busy, a sleeping one idle."""

from __future__ import annotations

import subprocess
import sys
import time

from fi_dist.runtime.idle.sampler import CpuSampler, proc_cpu_seconds


def test_cpu_sampler_tells_a_spinning_process_from_a_sleeping_one():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)  # past interpreter start-up
        s = CpuSampler()
        assert s.sample({0: spin.pid, 1: sleep.pid}) == []  # first sight: no interval yet
        time.sleep(1.0)
        by_rank = {d.name.split()[1]: d.utilisation for d in s.sample({0: spin.pid,
                                                                          1: sleep.pid})}
        # Over the default 5 % threshold even on a crowded 2-core machine; asleep under it.
        assert by_rank["0"] > 5.0
        assert by_rank["1"] < 5.0
    finally:
        for p in (spin, sleep):
            p.kill()
            p.wait()
    assert proc_cpu_seconds(spin.pid) is None  # reaped: gone from /proc
