"""What the head takes from a pool worker, and what it refuses: a flaky GPU or a
liar sends short, NaN, wrong-codec, inf-scaled or over-claiming deltas."""
import numpy as np
import pytest

from cluster.train.deltas import Expected, norm_outliers, take
from jobs.gpt.codecs import encode, packed_problem

N = 1000
TPS = 64  # tokens per step


def result(codec="fp16", delta=None, steps=5, tokens=None, loss=2.5, wall=1.0, fetch=0.1, sampler=None):
    p = encode(np.full(N, 1e-3, np.float32) if delta is None else delta, codec)
    return (p.codec, p.data, p.scales, p.size, steps * TPS if tokens is None else tokens, steps, wall, fetch, loss,
            {"state": 1} if sampler is None else sampler)


def expect(codec="fp16", max_steps=10):
    return Expected(codec, N, TPS, max_steps)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "int4"])
def test_an_honest_delta_of_every_codec_is_taken(codec):
    taken = take(result(codec), expect(codec), elapsed_s=1.0)
    assert not isinstance(taken, str), taken
    assert taken.tokens == 5 * TPS and taken.delta.shape == (N,) and np.allclose(taken.delta, 1e-3, rtol=0.2)


def corrupt(field, value, codec="int8"):
    r = list(result(codec))
    r[field] = value
    return tuple(r)


@pytest.mark.parametrize("bad, reason", [
    (corrupt(3, 1), "delta size: expected 1000"),  # one element broadcast over every parameter
    (corrupt(1, np.zeros(1, np.int8)), "delta data: expected 1000 codes"),
    (corrupt(0, "fp16"), "delta codec: expected int8"),
    (corrupt(2, np.full(4, 3e38, np.float32)), "delta: not finite"),  # an int8 scale of 3e38
    (corrupt(2, np.full(4, np.nan, np.float32)), "delta scales: expected finite"),
    (corrupt(1, np.zeros(N, np.float32)), "delta data: expected a flat int8"),
    (result("int8", tokens=10**15), "tokens: expected 5 steps"),
    (result("int8", steps=11), "steps: expected 1 to 10"),
    (result("int8", steps=0, tokens=0), "steps: expected 1 to 10"),
    (result("int8", loss=float("nan")), "loss: expected a finite number"),
    (result("int8", sampler={"x": "y" * 10_000}), "sampler:"),
    (("fp16", None), "result: expected the ten fields"),
    ("junk", "result: expected the ten fields"),
])
def test_a_broken_or_forged_result_is_refused_with_its_reason(bad, reason):
    got = take(bad, expect("int8"), elapsed_s=1.0)
    assert isinstance(got, str) and got.startswith(reason), got


def test_a_nan_delta_is_refused_in_every_float_codec():
    nan = np.full(N, np.nan, np.float32)
    for codec in ("fp32", "fp16"):
        assert take(result(codec, delta=nan), expect(codec), 1.0) == "delta: not finite"


def test_a_claimed_compute_time_is_held_within_what_the_head_saw():
    fast_liar = take(result("fp16", wall=0.001, fetch=0.0), expect("fp16"), elapsed_s=2.0)
    assert fast_liar.compute_s == pytest.approx(0.5)  # a quarter of what the head saw at least
    slow = take(result("fp16", wall=30.0, fetch=0.0), expect("fp16"), elapsed_s=2.0)
    assert slow.compute_s == pytest.approx(2.0)


def test_a_delta_far_larger_than_its_peers_is_refused():
    assert norm_outliers({"a": 1.0, "b": 1.3, "c": 500.0}, None) == {"c"}
    assert norm_outliers({"a": 1.0, "huge": 1e6}, None) == {"huge"}  # two: each against the other
    assert norm_outliers({"a": 1.0, "b": 3.0}, None) == set()  # a hot worker is not a liar
    assert norm_outliers({"alone": 50.0}, typical=1.0) == {"alone"}  # alone: against recent rounds
    assert norm_outliers({"alone": 50.0}, typical=None) == set()  # nothing to compare with yet


def test_the_codec_check_knows_each_layout():
    for codec in ("fp32", "fp16", "int8", "int4"):
        p = encode(np.linspace(-1, 1, 777, dtype=np.float32), codec)
        assert packed_problem(p.codec, p.data, p.scales, p.size, codec, 777) is None
        assert packed_problem(p.codec, p.data[:-1], p.scales, p.size, codec, 777) is not None
