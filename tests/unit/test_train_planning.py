"""How the head decides where training goes and how long a pool round is, with
plain numbers: placement, requeue, speed estimates, step plans, pool options."""
import pytest

from cluster.train.options import PoolOptionError, PoolOptions
from cluster.train.placement import fastest, gpt_bytes_needed, training_slots
from cluster.train.planning import (
    AUTO_MIN_STEPS,
    auto_sync_steps,
    blend_speed,
    estimate_speeds,
    fastest_steps,
    plan_round,
    start_retry_wait,
)
from cluster.train.service import requeue_reason
from workers.records import GpuInfo, HostInfo

SMALL = {"n_embd": 128, "n_layer": 4, "block_size": 64, "vocab_size": 65}
BIG = {"n_embd": 2048, "n_layer": 24, "block_size": 1024, "vocab_size": 50304}


def pc(name, *gpus, cpu=40.0, duty=1.0):
    return HostInfo(name=name, cpu_model="cpu", cpu_cores=4, ram_bytes=8 * 2**30, disk_bytes=2**40,
                    gpus=[GpuInfo(index=i, uuid=f"GPU-{name}-{i}", name=n, vram_bytes=v * 2**30,
                                  compute_capability="8.6", driver="550", speed_gflops=s)
                          for i, (n, v, s) in enumerate(gpus)],
                    cpu_gflops=cpu, duty_cycle=duty)


def test_a_job_goes_to_the_fastest_free_device_whose_memory_fits():
    need = gpt_bytes_needed(SMALL)
    mixed = pc("mixed", ("GTX 1060", 3, 4000.0), ("RTX 3060", 12, 12000.0))
    office = pc("office")
    slots = training_slots(mixed, 0, need) + training_slots(office, 0, need)
    best = fastest(slots)
    assert (best.host, best.gpu) == ("mixed", 1)
    # With the RTX busy, the GTX is next; a CPU-only PC takes one job on its CPU.
    assert [(s.host, s.gpu) for s in training_slots(mixed, 1, need)] == [("mixed", 0)]
    assert [(s.host, s.gpu) for s in training_slots(office, 0, need)] == [("office", None)]
    assert training_slots(office, 1, need) == []
    assert training_slots(office, 0, need, allow_cpu=False) == []


def test_a_model_too_big_for_every_card_waits_and_a_duty_cycle_slows_a_pc():
    need = gpt_bytes_needed(BIG)
    assert need > 12 * 2**30
    assert training_slots(pc("mixed", ("RTX 3060", 12, 12000.0)), 0, need) == []
    half = training_slots(pc("half", ("RTX 3060", 12, 12000.0), duty=0.5), 0, gpt_bytes_needed(SMALL))
    assert half[0].speed_gflops == 6000.0
    assert fastest([]) is None


def job(**kw):
    return {"id": 1, "state": "running", "pool_json": None, "host": "a", **kw}


def test_requeue_decisions():
    alive, flying, pools = {"a"}, {1}, set()
    assert requeue_reason(job(), alive, flying, pools) is None
    assert requeue_reason(job(host="b"), alive, flying, pools) == "host b is gone"
    assert requeue_reason(job(), alive, set(), pools) == "its task was lost"
    assert requeue_reason(job(state="queued", host=None), alive, set(), pools) is None
    assert requeue_reason(job(state="done"), set(), set(), pools) is None
    pool = job(pool_json="{}", host="pool")
    assert requeue_reason(pool, alive, set(), {1}) is None
    assert requeue_reason(pool, alive, set(), set()) == "its round loop ended"


def test_unmeasured_workers_are_assumed_as_fast_per_gflop_as_the_measured_ones():
    speeds, real = estimate_speeds({"a": (10_000.0, 100.0), "b": (None, 50.0)})
    assert real and speeds == {"a": 10_000.0, "b": 5_000.0}
    # Nothing measured yet: GFLOP/s stand in, right only in ratio.
    speeds, real = estimate_speeds({"a": (None, 100.0), "b": (None, 25.0)})
    assert not real and speeds == {"a": 100.0, "b": 25.0}
    speeds, real = estimate_speeds({"a": (None, 0.0)})
    assert speeds["a"] > 0


def test_steps_follow_speed_and_the_last_round_ends_on_the_budget():
    speeds = {"fast": 8000.0, "half": 4000.0, "slow": 1000.0}
    steps, last = plan_round(speeds, 16, remaining_steps=1000)
    assert steps == {"fast": 16, "half": 8, "slow": 2} and not last
    steps, last = plan_round(speeds, 16, remaining_steps=13)
    assert last and sum(steps.values()) <= 14 and steps["fast"] > steps["half"] >= steps["slow"] >= 1


def test_round_length_fixed_grown_or_chosen_from_the_link():
    fixed = PoolOptions(sync_steps=10, sync_growth=1.5, max_sync_steps=30)
    assert [fastest_steps(fixed, r, 0) for r in (0, 1, 2, 5)] == [10, 15, 22, 30]
    auto = PoolOptions()
    assert fastest_steps(auto, 3, 0) == AUTO_MIN_STEPS
    assert fastest_steps(auto, 3, 40) == 40
    # A round whose transfers took 1 s of a 1.5 s round, at 0.01 s a step: long enough
    # that transfers are under a tenth of it.
    steps = auto_sync_steps(round_wall=1.5, compute_wall=0.5, fast_step_s=0.01)
    assert steps * 0.01 * 0.1 >= 1.0 * 0.9 - 1e-9
    assert auto_sync_steps(1.0, 1.0, 0.01) == AUTO_MIN_STEPS


def test_speed_estimates_move_halfway_and_failed_starts_back_off():
    assert blend_speed(None, 100.0) == 100.0
    assert blend_speed(100.0, 200.0) == 150.0
    assert [start_retry_wait(n) for n in (1, 2, 3, 10)] == [30.0, 60.0, 120.0, 600.0]


@pytest.mark.parametrize("data, message", [
    ({"workers": -1}, "workers:"),
    ({"codec": "zip"}, "codec: expected one of"),
    ({"outer_lr": 3.0}, "outer_lr:"),
    ({"outer_momentum": 1.0}, "outer_momentum:"),
    ({"sync_growth": 0.5}, "sync_growth:"),
    ({"token_factor": 0}, "token_factor:"),
    ({"checkpoint_rounds": 0}, "checkpoint_rounds:"),
    ({"nope": 1}, "nope: not a pool option"),
    ({"sync_steps": "8"}, "sync_steps: expected int"),
    ({"allow_cpu": 1}, "allow_cpu: expected bool"),
])
def test_bad_pool_options_get_a_one_line_error_naming_the_field(data, message):
    with pytest.raises(PoolOptionError) as err:
        PoolOptions.from_dict(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_pool_options_take_ints_for_floats_and_keep_the_rest_default():
    opts = PoolOptions.from_dict({"outer_lr": 1, "workers": 3, "hosts": "a,b"})
    assert opts.outer_lr == 1.0 and isinstance(opts.outer_lr, float)
    assert opts.workers == 3 and opts.codec == "fp16" and opts.hosts == "a,b"
