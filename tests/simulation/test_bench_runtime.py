"""``resetfree-bench runtime`` helpers."""

from __future__ import annotations

import os

from simulation.drills.bench_runtime import cpu_steal_s

STAT = """cpu  3893384 712637 158013 1663885 8356 0 3721 15462 0 0
cpu0 2023878 323041 74874 794395 2968 0 839 7519 0 0
cpu1 1869505 389595 83138 869490 5387 0 2882 7942 0 0
intr 19423522 0 0 0
"""


def test_steal_is_read_from_the_all_cpu_line_in_clock_ticks() -> None:
    assert cpu_steal_s(STAT) == 15462 / os.sysconf("SC_CLK_TCK")


def test_no_steal_figure_is_none_not_an_error() -> None:
    assert cpu_steal_s("cpu  1 2 3 4\n") is None  # an old kernel: no steal column
    assert cpu_steal_s("") is None
    assert cpu_steal_s("cpu  a b c d e f g h\n") is None
    live = cpu_steal_s()
    assert live is None or live >= 0
