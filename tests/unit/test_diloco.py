"""The pieces of multi-worker training that need no cluster: compression, the
outer step, step planning, the duty cycle, and one local round in plain PyTorch."""
import numpy as np
import pytest
import torch

from jobs import dutycycle
from jobs.dutycycle import DutyCycle
from jobs.gpt.codecs import Broadcast, ErrorFeedback, decode, encode
from jobs.gpt.config import ConfigError, load_config
from jobs.gpt.diloco import LocalTrainer, flat_params
from jobs.gpt.outer import (
    OuterOptimizer,
    PoolSchedule,
    allreduce_bytes,
    average_deltas,
    plan_steps,
    pool_lr_scale,
    sync_steps_for_link,
)


@pytest.mark.parametrize("codec,tolerance,bytes_per_value",
                         [("fp32", 0, 4), ("fp16", 1e-3, 2), ("int8", 1e-2, 1), ("int4", 0.15, 0.5)])
def test_codecs_round_trip_within_their_precision_and_size(codec, tolerance, bytes_per_value):
    rng = np.random.default_rng(0)
    vec = (rng.standard_normal(10_000) * 0.01).astype(np.float32)
    vec[17] = 0.5  # an outlier only coarsens its own block under int8
    packed = encode(vec, codec)
    back = decode(packed)
    assert back.shape == vec.shape
    assert np.max(np.abs(back - vec)) <= tolerance * np.max(np.abs(vec)) + 1e-7
    if codec.startswith("int"):
        far = slice(1024, None)  # blocks without the outlier keep a fine scale
        assert np.max(np.abs(back[far] - vec[far])) <= tolerance * np.max(np.abs(vec[far]))
    assert packed.nbytes <= vec.size * bytes_per_value * 1.07 + 64


def test_fp16_rounds_exactly_as_numpy_does_small_values_included():
    rng = np.random.default_rng(1)
    # Every float32 exponent (random bit patterns), a delta's typical tiny values, and the edges.
    vec = np.concatenate([
        rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        (rng.standard_normal(100_000) * 1e-5).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 2**-24, 2**-25, 3 * 2**-25, 2**-14,
                  1 + 2**-11, 1 + 3 * 2**-11], dtype=np.float32),
    ])
    with np.errstate(over="ignore"):
        want = vec.astype(np.float16)
    packed = encode(vec, "fp16")
    real = ~np.isnan(vec)
    np.testing.assert_array_equal(packed.data[real].view(np.uint16), want[real].view(np.uint16))
    assert np.isnan(packed.data[~real]).all()
    np.testing.assert_array_equal(decode(packed)[real], want[real].astype(np.float32))


def test_unknown_codec_is_a_one_line_error():
    with pytest.raises(ConfigError, match="codec"):
        encode(np.zeros(3, np.float32), "int2")


def test_error_feedback_carries_rounding_into_the_next_message():
    rng = np.random.default_rng(3)
    link = ErrorFeedback("int4")
    sent, received = np.zeros(4096, np.float32), np.zeros(4096, np.float32)
    for _ in range(50):
        vec = (rng.standard_normal(4096) * 1e-3).astype(np.float32)
        sent += vec
        received += decode(link.encode(vec))
    # Without feedback 50 roundings would add up; with it, what is missing is one message's worth.
    assert np.max(np.abs(sent - received)) <= 1e-3 * 4


def test_a_broadcast_keeps_every_workers_copy_identical_to_the_heads():
    rng = np.random.default_rng(4)
    params = rng.standard_normal(5000).astype(np.float32)
    cast = Broadcast(params, "int8")
    first = decode(cast.full())
    old_hand = first.copy()
    for _ in range(5):
        params = params + (rng.standard_normal(5000) * 1e-2).astype(np.float32)
        msg = cast.message(params)
        assert not msg.full and msg.nbytes < params.nbytes / 3
        old_hand = old_hand + decode(msg)
    np.testing.assert_array_equal(old_hand, cast.held)  # bit for bit: the same bytes decoded the same way
    np.testing.assert_array_equal(decode(cast.full()), cast.held)  # what a newcomer gets
    assert np.max(np.abs(cast.held - params)) < 0.05  # and it follows the head's parameters


def test_outer_step_is_nesterov_momentum_on_the_averaged_delta():
    params = np.array([1.0, 1.0], np.float32)
    outer = OuterOptimizer(2, lr=0.5, momentum=0.9)
    g = np.array([0.2, -0.4], np.float32)
    p1 = outer.step(params, g)
    # buf = g; update = g + 0.9 * g
    np.testing.assert_allclose(p1, params - 0.5 * 1.9 * g, rtol=1e-6)
    p2 = outer.step(p1, g)
    # buf = 0.9 g + g = 1.9 g; update = g + 0.9 * 1.9 g
    np.testing.assert_allclose(p2, p1 - 0.5 * (1 + 0.9 * 1.9) * g, rtol=1e-6)
    plain = OuterOptimizer(2, lr=1.0, momentum=0.0)
    np.testing.assert_allclose(plain.step(params, g), params - g)


def test_deltas_are_weighted_by_tokens():
    a, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.testing.assert_allclose(average_deltas([(a, 300), (b, 100)]), 0.75)


def test_steps_follow_speed_so_workers_finish_together():
    steps = plan_steps({"fast": 8000.0, "half": 4000.0, "eighth": 1000.0, "crawl": 10.0}, 40)
    assert steps == {"fast": 40, "half": 20, "eighth": 5, "crawl": 1}


def test_the_pool_scales_its_learning_rate_by_its_speed_over_the_fastest():
    assert pool_lr_scale([8000.0]) == 1.0  # one worker trains exactly like the single-worker job
    assert pool_lr_scale([8.0, 4.0, 2.0, 1.0]) == pytest.approx(1.875)
    assert pool_lr_scale([1.0] * 16) == 4.0  # capped
    cfg = load_config("shakespeare-char-cpu")
    plain = PoolSchedule(total_tokens=1_536_000)
    scaled = PoolSchedule(total_tokens=1_536_000, lr_scale=2.0)
    for tokens in (0, 500_000, 1_536_000):
        assert scaled.lr(tokens, cfg) == pytest.approx(2 * plain.lr(tokens, cfg))


def test_sync_interval_keeps_communication_under_a_tenth():
    # 0.1 s per step; a LAN round trip of 0.05 s, a home link of 5 s
    lan, home = sync_steps_for_link(0.1, 0.05), sync_steps_for_link(0.1, 5.0)
    assert lan < home
    for steps, comm in ((lan, 0.05), (home, 5.0)):
        assert comm / (comm + steps * 0.1) <= 0.10 + 1e-9


def test_allreduce_baseline_counts_a_ring_per_step():
    # 4 workers x 768 tokens per step: one step for 3072 tokens; each worker sends and
    # receives 2 * 3/4 of a 4-byte gradient.
    assert allreduce_bytes(3072, 1000, 4, 768) == pytest.approx(4 * 2 * 1.5 * 4000)


def test_schedule_stretches_the_single_worker_cosine_over_the_pool_budget():
    cfg = load_config("shakespeare-char-cpu")
    sched = PoolSchedule(total_tokens=2 * 1_536_000)
    assert sched.lr(0, cfg) < cfg.train.learning_rate / 10  # warming up
    assert sched.lr(2 * 768 * 100, cfg) == pytest.approx(cfg.train.learning_rate)
    assert sched.lr(2 * 1_536_000, cfg) == pytest.approx(cfg.train.min_lr)


def test_duty_cycle_rests_in_proportion_to_the_work(monkeypatch):
    clock = [100.0]
    slept = []
    monkeypatch.setattr(dutycycle.time, "process_time", lambda: clock[0])
    monkeypatch.setattr(dutycycle.time, "sleep", slept.append)  # sleeping uses no CPU time
    limit = DutyCycle(0.25)
    limit.start()
    clock[0] += 2.0  # two seconds of work
    limit.after_work()
    assert slept == [pytest.approx(6.0)]  # 2 s of work in 8 s of wall time
    limit.after_work()  # no work since: no rest
    assert slept[-1] == pytest.approx(0.0)
    monkeypatch.setenv(dutycycle.DUTY_CYCLE_ENV, "1")
    assert DutyCycle.from_env() is None
    monkeypatch.setenv(dutycycle.DUTY_CYCLE_ENV, "0.5")
    assert DutyCycle.from_env().fraction == 0.5
    with pytest.raises(ValueError, match="duty-cycle"):
        DutyCycle(0)


def test_a_deferred_rest_counts_the_time_spent_waiting(monkeypatch):
    cpu, wall, slept = [100.0], [50.0], []
    monkeypatch.setattr(dutycycle.time, "process_time", lambda: cpu[0])
    monkeypatch.setattr(dutycycle.time, "monotonic", lambda: wall[0])
    monkeypatch.setattr(dutycycle.time, "sleep", slept.append)
    limit = DutyCycle(0.5)
    limit.resume()
    cpu[0] += 1.0  # a second of work calls for a second of rest...
    limit.defer()
    wall[0] += 0.6  # ...of which 0.6 s pass waiting for the next work
    limit.resume()
    assert slept == [pytest.approx(0.4)]
    wall[0] += 5.0  # a long wait: no rest is left to take
    limit.resume()
    assert len(slept) == 1


def test_a_throttled_worker_sends_its_delta_before_its_last_rest(monkeypatch):
    calls = []
    _, trainer = _tiny_trainer(seed=3)
    trainer.throttle = DutyCycle(0.25)
    for name in ("resume", "after_work", "defer"):
        monkeypatch.setattr(trainer.throttle, name, lambda name=name: calls.append(name))
    msg = Broadcast(flat_params(trainer.model), "fp16").full()
    assert trainer.run_round(msg, 3, 0, 3 * 64, PoolSchedule(total_tokens=500 * 64)).steps == 3
    # Rests between the steps; the last one's while the other PCs end the round.
    assert calls == ["resume", "after_work", "after_work", "defer"]


def _tiny_trainer(seed=0, codec="fp16"):
    cfg = load_config("shakespeare-char-cpu", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16,
                                                         "batch_size": 4, "max_iters": 50, "warmup_iters": 2})
    rng = np.random.default_rng(1)
    text = np.tile(np.arange(10, dtype=np.uint16), 500)  # a learnable repeating sequence
    text[rng.integers(0, text.size, 50)] = rng.integers(0, 10, 50)
    return cfg, LocalTrainer(cfg, text, 10, seed=seed, device="cpu", codec=codec)


def test_a_local_round_returns_the_delta_and_leaves_the_global_params_untouched():
    cfg, trainer = _tiny_trainer()
    global_params = flat_params(trainer.model)
    before = global_params.copy()
    sched = PoolSchedule(total_tokens=50 * 64)
    result = trainer.run_round(Broadcast(global_params, "fp16").full(), 5, 0, 5 * 64, sched)
    np.testing.assert_array_equal(global_params, before)  # the caller's array is not trained in place
    local = flat_params(trainer.model)
    np.testing.assert_allclose(decode(result.delta), before - local, atol=1e-3)
    assert result.tokens == 5 * 64 and result.steps == 5 and np.linalg.norm(decode(result.delta)) > 0


def test_a_round_on_a_time_budget_runs_as_many_steps_as_the_time_allows():
    sched = PoolSchedule(total_tokens=500 * 64)
    _, fast = _tiny_trainer(seed=1)
    msg = Broadcast(flat_params(fast.model), "fp16").full()
    assert fast.run_round(msg, 5, 0, 5 * 64, sched, budget_s=60.0).steps == 10  # faster than planned: up to 2x
    assert fast.run_round(msg, 5, 0, 5 * 64, sched, budget_s=1e-9).steps == 1  # always at least one step
    # Same plan, same budget: a PC at a quarter duty cycle fits far fewer steps in it.
    budget = 0.5
    full = fast.run_round(msg, 400, 0, 400 * 64, sched, budget_s=budget)
    _, slow = _tiny_trainer(seed=2)
    slow.throttle = DutyCycle(0.25)
    slow.throttle.start()
    quarter = slow.run_round(msg, 400, 0, 400 * 64, sched, budget_s=budget)
    assert 2 <= quarter.steps < 0.6 * full.steps < 400
    assert quarter.tokens == quarter.steps * 64


def test_a_slow_worker_ends_its_round_early_rather_than_hold_the_others_up(monkeypatch):
    from types import SimpleNamespace

    from jobs.gpt import diloco

    # A clock that reads 0.4 s later at every step: steps of 0.4 s against a 1.0 s budget.
    # After two steps (0.8 s) a third would end 0.2 s past the budget; stopping ends 0.2 s early.
    readings = iter(0.4 * k for k in range(1000))
    monkeypatch.setattr(diloco, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    sched = PoolSchedule(total_tokens=500 * 64)
    _, trainer = _tiny_trainer(seed=1)
    msg = Broadcast(flat_params(trainer.model), "fp16").full()
    # Alone, or the fastest (the others' speed is under half its own): the third step pays.
    assert trainer.run_round(msg, 3, 0, 3 * 64, sched, budget_s=1.0, overrun_cost=0.5).steps == 3
    # The slowest of a pool (the others are 4x faster and would wait): it stops at the budget's edge.
    assert trainer.run_round(msg, 3, 0, 3 * 64, sched, budget_s=1.0, overrun_cost=4.0).steps == 2


def test_rounds_with_an_outer_step_lower_the_loss():
    cfg, a = _tiny_trainer(seed=1)
    _, b = _tiny_trainer(seed=2, codec="int8")
    params = flat_params(a.model)
    outer = OuterOptimizer(params.size, 0.7, 0.9)
    sched = PoolSchedule(total_tokens=40 * 64)
    losses = []
    tokens = 0
    cast = Broadcast(params, "int8")
    for i in range(4):
        msg = cast.full() if i == 0 else cast.message(params)
        results = [w.run_round(msg, n, tokens, 15 * 64, sched) for w, n in ((a, 10), (b, 5))]
        params = outer.step(params, average_deltas([(decode(r.delta), r.tokens) for r in results]))
        tokens += 15 * 64
        losses.append(results[0].loss)
    assert losses[-1] < losses[0] - 0.5
    np.testing.assert_array_equal(a.global_copy, cast.held)  # the workers followed the broadcasts
    assert torch.isfinite(torch.tensor(losses)).all()
