"""The benchmark's own instruments, on this test process: CPU time read from /proc, and the
resident-memory sampler behind "peak RSS and growth per 100,000 messages in flight". No timing
thresholds: only that the figures follow what the process did."""

from __future__ import annotations

import os

from streams.lab.bench.instruments import Measured, RssSampler, cpu_seconds


def test_cpu_seconds_count_the_work_this_process_did() -> None:
    pid = os.getpid()
    before = cpu_seconds([pid])
    total = 0
    for value in range(3_000_000):  # CPU work the clock-tick counter must see (~0.2 s)
        total += value * value
    after = cpu_seconds([pid])
    assert total > 0
    assert after > before
    assert cpu_seconds([pid, pid]) >= 2 * after  # each process counted, summed


def test_memory_growth_follows_what_is_held_per_message_in_flight() -> None:
    sampler = RssSampler(os.getpid())
    held: list[bytearray] = []
    for in_flight in range(0, 50_001, 10_000):
        while len(held) < in_flight // 1000:
            held.append(bytearray(2**20))  # 1 MiB per 1,000 "messages": 100 MiB per 100,000
            held[-1][::4096] = b"x" * len(held[-1][::4096])  # touched, so resident
        sampler.sample(in_flight)
    summary = sampler.summary()
    assert summary["samples"] == 6
    assert summary["max_in_flight"] == 50_000
    assert summary["peak_rss_bytes"] >= 50 * 2**20
    growth = summary["growth_bytes_per_100k_in_flight"]
    assert growth is not None and 80 * 2**20 < growth < 120 * 2**20


def test_figures_compare_throughput_and_cpu_with_the_baseline() -> None:
    baseline = Measured(msgs_per_s=100_000.0, cpu_us_per_msg=5.0)
    stage = Measured(msgs_per_s=40_000.0, cpu_us_per_msg=10.0)
    figures = stage.figures(baseline)
    assert figures["ratio"] == 0.4
    assert figures["cpu_ratio"] == 0.5
    assert figures["msgs_per_s"] == 40_000.0 and figures["cpu_us_per_msg"] == 10.0
