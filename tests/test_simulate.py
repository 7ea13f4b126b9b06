"""The sample pipeline: reductions overlap the next sample's runs but stay in order, and failures surface."""

import threading

import pytest

from pytest_quantacc.engine.runner import pipelined


@pytest.mark.parametrize("overlap", [True, False])
def test_reductions_run_in_sample_order_one_at_a_time(overlap):
    seen, active, worst = [], [0], [0]
    lock = threading.Lock()

    def reduce(x):
        with lock:
            active[0] += 1
            worst[0] = max(worst[0], active[0])
        seen.append(x)
        with lock:
            active[0] -= 1

    pipelined(range(50), lambda s: s * 2, reduce, overlap=overlap)
    assert seen == [2 * i for i in range(50)]
    assert worst[0] == 1


def test_a_failing_reduction_is_raised():
    def reduce(x):
        if x == 3:
            raise ValueError("boom at 3")

    with pytest.raises(ValueError, match="boom at 3"):
        pipelined(range(10), lambda s: s, reduce, overlap=True)
