"""The server's shared link: max-min fair shares, recomputed as transfers start and end."""
from __future__ import annotations

import math

import pytest

from fedmpi.net.fairshare import finish_times, water_fill


def test_water_fill_gives_slow_links_their_own_and_splits_the_rest():
    assert water_fill([1.0, 10.0, 10.0], 9.0) == [1.0, 4.0, 4.0]
    assert water_fill([2.0, 3.0], 10.0) == [2.0, 3.0]  # the server is not the bottleneck
    assert sum(water_fill([5.0] * 4, 10.0)) == pytest.approx(10.0)


def test_equal_downloads_from_a_slow_server_take_n_times_longer():
    # 100 clients at 10 Gbit/s each, a 90 MB model each, one 10 Gbit/s server: 9 GB through 10 Gbit/s.
    bits = 90e6 * 8
    ends = finish_times([0.0] * 100, [bits] * 100, [10e9] * 100, 10e9)
    assert ends == pytest.approx([7.2] * 100)
    assert finish_times([0.0] * 100, [bits] * 100, [10e9] * 100, math.inf) == pytest.approx([0.072] * 100)


def test_a_late_start_and_an_early_finish_reshare_the_link():
    # A (8 bits) and B (4 bits) share 2 bit/s: both at 1 bit/s; B ends at 4, then A alone at 2 bit/s.
    assert finish_times([0.0, 0.0], [8.0, 4.0], [10.0, 10.0], 2.0) == pytest.approx([6.0, 4.0])
    # C starts at 3 while D (6 bits) runs alone at 2 bit/s: D has 0 left at 3, C then runs alone.
    assert finish_times([0.0, 3.0], [6.0, 2.0], [10.0, 10.0], 2.0) == pytest.approx([3.0, 4.0])
    # Overlap: E from 0 (4 bits), F from 1 (4 bits), 2 bit/s: E alone 1 s (2 left), then 1 bit/s each.
    assert finish_times([0.0, 1.0], [4.0, 4.0], [10.0, 10.0], 2.0) == pytest.approx([3.0, 4.0])
