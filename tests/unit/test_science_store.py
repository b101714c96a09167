"""The BOINC-style work-unit store: replication, validation, credit, trust, durability."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.science import assimilate
from cluster.science.credit import cobblestones
from cluster.science.states import GpuCaps, HostCaps
from cluster.science.store import ScienceStore
from cluster.science.validate import find_consensus
from jobs.science.tasks import Report

FLOPS = 3e12
CREDIT = FLOPS / 1e9 / 86400 * 200


@dataclass(frozen=True)
class Needs:
    gpu: bool = False
    gpu_capable: bool = False
    min_vram_bytes: int = 0
    min_compute_capability: float = 0.0


class Doubler:
    """Fake app: params {"x": int} -> result {"y": 2x}."""

    name = "double"
    version = 1
    needs = Needs()
    self_verifying = False
    default_quorum = 2
    max_result_bytes = 100

    def validate_params(self, params):
        if not isinstance(params, dict) or not isinstance(params.get("x"), int):
            raise ValueError(f"x: expected an integer, got {params.get('x') if isinstance(params, dict) else params!r}")
        return {"x": params["x"], "tag": params.get("tag", "")}

    def flops(self, params):
        return FLOPS

    def check_result(self, result):
        if not isinstance(result, dict) or not isinstance(result.get("y"), int):
            raise ValueError("y: expected an integer")

    def compare(self, a, b):
        return a["y"] == b["y"]

    def verify(self, params, result):
        return True


class SelfChecking(Doubler):
    name = "selfcheck"
    self_verifying = True
    default_quorum = 1  # verify() proves the work here, unlike hp-fold's check of a fold

    def verify(self, params, result):
        return result["y"] == 2 * params["x"]


class GpuApp(Doubler):
    name = "gpuapp"
    needs = Needs(gpu=True, min_vram_bytes=4 << 30, min_compute_capability=6.0)


APPS = {a.name: a for a in (Doubler(), SelfChecking(), GpuApp())}


def lookup(name):
    if name not in APPS:
        raise ValueError(f"app: unknown {name!r}")
    return APPS[name]


class Never:
    """An rng that never picks single-copy replication."""

    def random(self):
        return 0.999999


class Always:
    def random(self):
        return 0.0


def open_store(tmp_path: Path, rng=None) -> ScienceStore:
    return ScienceStore(tmp_path / "state.db", tmp_path / "out", apps=lookup, rng=rng or Never())


def good(task):
    return {"y": 2 * task.params["x"]}


def bad(task):
    return {"y": 2 * task.params["x"] + 1}


def work(store, host, n=100, now=0.0, answer=good, hostcaps=None):
    """Fetch up to n tasks for host and report answer(task) for each; returns the tasks."""
    tasks = store.fetch_work(hostcaps or HostCaps(host), n, now=now)
    store.report(host, [Report(t.result_id, "success", answer(t)) for t in tasks], now=now + 1)
    return tasks


def output_lines(store, batch):
    path = store.output_path(batch)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


def test_quorum_of_two_agreeing_results_is_canonical_credited_and_assimilated(store):
    batch = store.submit("double", [{"x": i} for i in range(5)], now=0)
    assert len(work(store, "a")) == 5
    assert not store.batch_status(batch)["done"]
    assert output_lines(store, batch) == []  # one result is not a quorum
    assert len(work(store, "b")) == 5
    st = store.batch_status(batch)
    assert st["done"] and st["wus"]["done"] == 5
    assert st["results"]["valid"] == 10 and st["results"]["invalid"] == 0
    assert st["credit_by_host"] == pytest.approx({"a": 5 * CREDIT, "b": 5 * CREDIT})
    assert store.credit_by_host() == pytest.approx({"a": 5 * CREDIT, "b": 5 * CREDIT})
    assert store.credit_by_app() == pytest.approx({"double": 10 * CREDIT})
    lines = output_lines(store, batch)
    assert sorted(line["params"]["x"] for line in lines) == list(range(5))
    assert all(line["result"]["y"] == 2 * line["params"]["x"] for line in lines)
    assert store.check_consistency() == []


def test_the_copies_owed_fall_as_copies_go_out_and_batches_are_cancelled(store):
    first = store.submit("double", [{"x": i} for i in range(5)], now=0)
    assert store.unsent_copies() == 2 * 5  # quorum 2
    work(store, "a", n=3)
    assert store.unsent_copies() == 2 * 5 - 3
    second = store.submit("double", [{"x": i} for i in range(4)], now=0)
    assert store.unsent_copies() == 2 * 5 - 3 + 2 * 4
    store.cancel(second)
    assert store.unsent_copies() == 2 * 5 - 3
    work(store, "a")
    work(store, "b")
    assert store.batch_status(first)["done"] and store.unsent_copies() == 0


def test_credit_is_200_cobblestones_per_gflop_day():
    assert cobblestones(1e9 * 86400) == pytest.approx(200.0)
    assert cobblestones(FLOPS) == pytest.approx(CREDIT)


def test_one_liar_among_three_is_outvoted_and_gets_no_credit(store):
    batch = store.submit("double", [{"x": 7}], min_quorum=3, target_nresults=3, now=0)
    work(store, "good1")
    work(store, "liar", answer=bad)
    work(store, "good2")
    st = store.batch_status(batch)
    assert st["done"] and st["results"]["valid"] == 2 and st["results"]["invalid"] == 1
    assert "liar" not in store.credit_by_host()
    assert output_lines(store, batch)[0]["result"] == {"y": 14}
    liar = next(h for h in store.host_stats() if h["host"] == "liar")
    assert liar["invalid"] == 1 and liar["consecutive_valid"] == 0
    assert store.check_consistency() == []


def test_disagreement_issues_one_more_copy_and_majority_wins(store):
    batch = store.submit("double", [{"x": 1}], now=0)
    work(store, "a")
    work(store, "liar", answer=bad)
    st = store.batch_status(batch)
    assert not st["done"] and st["results"]["unsent"] == 1  # inconclusive: one more opinion
    assert len(work(store, "c")) == 1
    st = store.batch_status(batch)
    assert st["done"] and st["results"]["valid"] == 2 and st["results"]["invalid"] == 1
    assert set(store.credit_by_host()) == {"a", "c"}
    assert output_lines(store, batch)[0]["host"] in {"a", "c"}


def test_no_consensus_when_max_total_reached(store):
    batch = store.submit("double", [{"x": 1}], max_total_results=3, now=0)
    for host, off in (("a", 1), ("b", 2), ("c", 3)):
        work(store, host, answer=lambda t, off=off: {"y": off})
    st = store.batch_status(batch)
    assert st["done"] and st["wus"]["error"] == 1 and st["wu_errors"] == {"no_consensus": 1}
    assert store.fetch_work(HostCaps("d"), 10, now=5) == []
    assert store.credit_by_host() == {}
    assert output_lines(store, batch) == []
    assert store.check_consistency() == []


def test_too_many_errors_ends_the_wu(store):
    batch = store.submit("double", [{"x": 1}], max_error_results=1, now=0)
    for host in ("a", "b"):
        tasks = store.fetch_work(HostCaps(host), 10, now=0)
        store.report(host, [Report(t.result_id, "client_error", "boom") for t in tasks], now=1)
    st = store.batch_status(batch)
    assert st["wu_errors"] == {"too_many_errors": 1} and st["done"]
    assert st["results"]["client_error"] == 2
    # the copy still out on a third host would be useless: nothing more is sent
    assert store.fetch_work(HostCaps("c"), 10, now=2) == []
    assert store.check_consistency() == []


def test_client_error_is_replaced_and_its_host_may_try_again(store):
    batch = store.submit("double", [{"x": 3}], now=0)
    [t] = store.fetch_work(HostCaps("a"), 10, now=0)
    assert store.fetch_work(HostCaps("a"), 10, now=0) == []  # not while its copy is out
    store.report("a", [Report(t.result_id, "client_error", "CUDA out of memory")], now=1)
    # On a small pool, the host whose copy failed retries it rather than leave it waiting.
    [again] = store.fetch_work(HostCaps("a"), 10, now=2)
    assert again.wu_id == t.wu_id and again.result_id != t.result_id
    store.report("a", [Report(again.result_id, "success", good(again))], now=3)
    assert store.fetch_work(HostCaps("a"), 10, now=4) == []  # its result counts once: no third copy
    assert not store.batch_status(batch)["done"]  # and never twice in one quorum
    work(store, "b", now=5)
    assert store.batch_status(batch)["done"]
    assert set(store.credit_by_host()) == {"a", "b"}
    assert store.check_consistency() == []


def test_a_two_pc_pool_with_failing_copies_ends_every_unit_valid(store):
    batch = store.submit("double", [{"x": i} for i in range(30)], max_error_results=8, max_total_results=20, now=0)
    rng = random.Random(3)
    for step in range(40):
        for host in ("a", "b"):
            tasks = store.fetch_work(HostCaps(host), 5, now=step)
            store.report(host, [Report(t.result_id, "success", good(t)) if rng.random() < 0.6
                                else Report(t.result_id, "client_error", "OOM") for t in tasks], now=step + 0.5)
        if store.batch_status(batch)["done"]:
            break
    st = store.batch_status(batch)
    assert st["done"] and st["wus"]["done"] == 30 and st["wus"]["error"] == 0, st
    assert set(store.credit_by_host()) == {"a", "b"}
    assert store.check_consistency() == []


def test_two_names_on_one_machine_never_meet_in_one_quorum(store):
    batch = store.submit("double", [{"x": i} for i in range(10)], now=0)
    pc = "machine-1"
    first = store.fetch_work(HostCaps("alias-1", machine=pc), 100, now=0)
    assert len(first) == 10
    assert store.fetch_work(HostCaps("alias-2", machine=pc), 100, now=0) == []  # same PC, another name
    lies = [Report(t.result_id, "success", bad(t)) for t in first]
    store.report("alias-1", lies, now=1)
    assert store.fetch_work(HostCaps("alias-2", machine=pc), 100, now=2) == []
    # A name's machine is the one it was first seen on: claiming another does not help.
    assert store.fetch_work(HostCaps("alias-1", machine="elsewhere"), 100, now=2) == []
    work(store, "honest-1", now=3)
    work(store, "honest-2", now=3)
    st = store.batch_status(batch)
    assert st["wus"]["done"] == 10
    assert set(st["credit_by_host"]) == {"honest-1", "honest-2"}
    assert store.check_consistency() == []


def test_deadline_miss_is_no_reply_and_reissued(store):
    batch = store.submit("double", [{"x": 2}], delay_bound=60, now=0)
    store.fetch_work(HostCaps("slow"), 10, now=0)
    work(store, "b", now=1)
    assert store.sweep(now=30).accepted == 0  # not yet
    summary = store.sweep(now=61)
    assert summary.accepted == 1
    st = store.batch_status(batch, now=61)
    assert st["results"]["no_reply"] == 1 and st["results"]["unsent"] == 1
    work(store, "c", now=62)
    assert store.batch_status(batch)["done"]
    slow = next(h for h in store.host_stats() if h["host"] == "slow")
    assert slow["no_reply"] == 1
    assert store.host_reliability("slow") < store.host_reliability("b")
    assert store.check_consistency() == []


def test_late_result_after_no_reply_still_counts(store):
    batch = store.submit("double", [{"x": 2}], delay_bound=60, now=0)
    [late] = store.fetch_work(HostCaps("late"), 10, now=0)
    work(store, "b", now=1)
    store.sweep(now=100)
    store.report("late", [Report(late.result_id, "success", {"y": 4})], now=101)
    assert store.batch_status(batch)["done"]
    assert store.credit_by_host() == pytest.approx({"late": CREDIT, "b": CREDIT})
    assert store.check_consistency() == []


def test_one_host_asking_repeatedly_never_gets_two_copies_of_a_wu(store):
    store.submit("double", [{"x": i} for i in range(20)], target_nresults=3, min_quorum=2, now=0)
    seen = []
    for _ in range(5):
        seen += [t.wu_id for t in store.fetch_work(HostCaps("greedy"), 7, now=0)]
    assert len(seen) == 20 and len(set(seen)) == 20
    other = [t.wu_id for t in store.fetch_work(HostCaps("other"), 100, now=0)]
    assert sorted(other) == sorted(seen)


def test_result_arriving_after_canonical_is_checked_against_it(store):
    batch = store.submit("double", [{"x": 5}, {"x": 6}], min_quorum=2, target_nresults=3, now=0)
    slow = store.fetch_work(HostCaps("slow"), 10, now=0)
    work(store, "a")
    work(store, "b")
    st = store.batch_status(batch)
    assert st["done"] and st["results"]["aborted"] == 2  # the slow copies are no longer needed
    by_x = {t.params["x"]: t for t in slow}
    store.report("slow", [Report(by_x[5].result_id, "success", {"y": 10}),
                          Report(by_x[6].result_id, "success", {"y": 99})], now=3)
    st = store.batch_status(batch)
    assert st["results"]["valid"] == 5 and st["results"]["invalid"] == 1
    assert store.credit_by_host()["slow"] == pytest.approx(CREDIT)
    assert len(output_lines(store, batch)) == 2
    assert store.check_consistency() == []


def _build_trust(store, hosts=("a", "b"), n=10):
    store.submit("double", [{"x": i} for i in range(n)], now=0)
    for h in hosts:
        work(store, h)


def test_trusted_host_gets_single_copies_after_ten_valid(tmp_path):
    rng = random.Random(7)
    store = open_store(tmp_path, rng=rng)
    _build_trust(store)
    assert all(h["trusted"] for h in store.host_stats())
    batch = store.submit("double", [{"x": i} for i in range(200)], now=1)
    work(store, "a", n=1000, now=2)
    st = store.batch_status(batch)
    # P(single) = 1 - 1/cv; cv grows from 10 as single copies validate: about 90%+ single
    singles = st["wus"]["done"]
    assert 150 < singles < 200
    assert st["results"]["unsent"] == 200 - singles
    assert len(output_lines(store, batch)) == singles
    assert store.check_consistency() == []
    store.close()


def test_a_trusted_host_always_has_some_units_spot_checked(tmp_path):
    store = open_store(tmp_path, rng=random.Random(11))
    _build_trust(store, n=200)  # cv 200: 1 - 1/cv would replicate only 0.5%
    batch = store.submit("double", [{"x": i} for i in range(400)], now=1)
    work(store, "a", n=1000, now=2)
    replicated = 400 - store.batch_status(batch)["wus"]["done"]
    assert 20 <= replicated <= 70, replicated  # SPOT_CHECK_SHARE of 400 is 40
    store.close()


def test_a_trusted_host_that_turns_liar_is_caught_and_its_single_copies_rechecked(tmp_path):
    store = open_store(tmp_path, rng=random.Random(5))
    _build_trust(store, hosts=("a", "b", "c"))
    batch = store.submit("double", [{"x": i} for i in range(80)], now=1)
    tasks = store.fetch_work(HostCaps("a"), 1000, now=2)
    # Honest on the first half, then it lies: most lies pass as single copies at first.
    store.report("a", [Report(t.result_id, "success", good(t) if t.params["x"] < 40 else bad(t))
                       for t in tasks], now=3)
    wrong_at_first = sum(line["result"]["y"] != 2 * line["params"]["x"] for line in output_lines(store, batch))
    assert wrong_at_first > 20
    for step in range(10):  # the others work until nothing is left
        work(store, "b", now=4 + step)
        work(store, "c", now=4 + step)
    st = store.batch_status(batch)
    assert st["done"] and st["wus"]["done"] == 80
    lines = output_lines(store, batch)
    assert len(lines) == 80 and len({line["wu"] for line in lines}) == 80
    assert all(line["result"]["y"] == 2 * line["params"]["x"] for line in lines)  # no lie is canonical
    stats = {h["host"]: h for h in store.host_stats()}
    assert not stats["a"]["trusted"]
    # a keeps the credit for its honest units (checked again) and for none of its lies.
    assert store.credit_by_host()["a"] == pytest.approx((10 + 40) * CREDIT)
    assert store.check_consistency() == []
    store.close()


def test_of_agreeing_results_the_most_trusted_hosts_is_canonical(store):
    _build_trust(store, hosts=("veteran", "helper"), n=12)
    batch = store.submit("double", [{"x": 5, "tag": "t"}], now=1)
    work(store, "newcomer", now=2)  # sent first
    work(store, "veteran", now=3)
    [line] = output_lines(store, batch)
    assert line["host"] == "veteran"


def test_untrusted_host_always_gets_replicated(tmp_path):
    store = open_store(tmp_path, rng=Always())
    _build_trust(store, n=9)  # one short of trust
    batch = store.submit("double", [{"x": 1}], now=1)
    work(store, "a", now=2)
    assert not store.batch_status(batch)["done"]


def test_invalid_result_resets_trust(tmp_path):
    store = open_store(tmp_path, rng=Never())
    _build_trust(store)
    store.submit("double", [{"x": 100}], now=1)
    work(store, "a", answer=bad, now=2)
    work(store, "b", now=2)
    work(store, "c", now=2)
    stats = {h["host"]: h for h in store.host_stats()}
    assert stats["a"]["consecutive_valid"] == 0 and not stats["a"]["trusted"]
    assert stats["b"]["consecutive_valid"] == 11 and stats["b"]["trusted"]
    store.close()


def test_failed_single_copy_falls_back_to_replication(tmp_path):
    store = open_store(tmp_path, rng=Always())
    _build_trust(store)
    batch = store.submit("double", [{"x": 1}], now=1)
    [t] = store.fetch_work(HostCaps("a"), 10, now=2)
    store.report("a", [Report(t.result_id, "client_error", "killed")], now=3)
    assert store.batch_status(batch)["results"]["unsent"] == 2  # full quorum again
    work(store, "b", now=4)
    assert not store.batch_status(batch)["done"]  # b is trusted, but the WU is replicated now
    work(store, "c", now=4)
    assert store.batch_status(batch)["done"]
    store.close()


def test_self_verifying_app_needs_one_verified_copy(store):
    batch = store.submit("selfcheck", [{"x": 4}, {"x": 5}], now=0)
    tasks = store.fetch_work(HostCaps("liar"), 10, now=0)
    summary = store.report("liar", [Report(t.result_id, "success", bad(t)) for t in tasks], now=1)
    assert summary.invalid == 2  # rejected at once, no quorum needed
    st = store.batch_status(batch)
    assert st["results"]["invalid"] == 2 and st["results"]["unsent"] == 2
    work(store, "honest")
    st = store.batch_status(batch)
    assert st["done"] and st["results"]["valid"] == 2
    assert store.credit_by_host() == pytest.approx({"honest": 2 * CREDIT})


@pytest.mark.parametrize(
    "payload",
    ["not a dict", {"y": "7"}, {"y": float("nan")}, {"y": 2, "junk": "x" * 500}, None],
    ids=["wrong-type", "wrong-field-type", "nan", "oversized", "none"],
)
def test_malformed_or_oversized_result_is_invalid_without_crashing(store, payload):
    batch = store.submit("double", [{"x": 1}], now=0)
    [t] = store.fetch_work(HostCaps("bad"), 10, now=0)
    summary = store.report("bad", [Report(t.result_id, "success", payload)], now=1)
    assert summary.invalid == 1
    st = store.batch_status(batch)
    assert st["results"]["invalid"] == 1 and st["results"]["unsent"] == 2
    work(store, "b")
    work(store, "c")
    assert store.batch_status(batch)["done"]
    assert store.check_consistency() == []


def test_unknown_foreign_duplicate_and_malformed_reports_are_ignored_and_counted(store):
    batch = store.submit("double", [{"x": 1}], now=0)
    [t] = store.fetch_work(HostCaps("a"), 10, now=0)
    store.fetch_work(HostCaps("b"), 10, now=0)
    s1 = store.report("b", [Report(t.result_id, "success", {"y": 99})], now=1)  # a's copy
    s2 = store.report("a", [Report(999999, "success", {"y": 2})], now=1)
    s3 = store.report("a", [Report(t.result_id, "success", {"y": 2}), Report(t.result_id, "success", {"y": 2})],
                      now=1)
    s4 = store.report("a", [Report(t.result_id, "success", {"y": 2})], now=2)
    s5 = store.report("a", [Report("x", "success", 1), Report(t.result_id, "exploded", None), ("junk",)], now=2)
    s6 = store.report("nobody", [Report(t.result_id, "success", {"y": 2})], now=2)
    assert s1.ignored == {"wrong_host": 1} and s2.ignored == {"unknown": 1}
    assert s3.accepted == 1 and s3.ignored == {"duplicate": 1} and s4.ignored == {"duplicate": 1}
    assert s5.ignored == {"malformed": 3} and s6.ignored == {"wrong_host": 1}
    assert store.ignored == {"wrong_host": 2, "unknown": 1, "duplicate": 2, "malformed": 3}
    st = store.batch_status(batch)
    assert st["results"]["success"] == 1 and st["results"]["in_progress"] == 1
    assert store.check_consistency() == []


def test_host_lost_reissues_its_work_at_once(store):
    batch = store.submit("double", [{"x": i} for i in range(3)], now=0)
    store.fetch_work(HostCaps("gone"), 10, now=0)
    work(store, "b")
    store.host_lost("gone", now=5)
    assert store.in_progress("gone") == []
    work(store, "c", now=6)
    assert store.batch_status(batch)["done"]
    assert "gone" not in store.credit_by_host()
    assert store.check_consistency() == []


def test_released_copies_go_back_without_penalty(store):
    batch = store.submit("double", [{"x": i} for i in range(4)], now=0)
    tasks = store.fetch_work(HostCaps("a"), 10, now=0)
    assert store.release("a", [t.result_id for t in tasks[:2]], now=1) == 2
    st = store.batch_status(batch)
    assert st["results"]["in_progress"] == 2 and st["results"]["unsent"] == 6
    again = store.fetch_work(HostCaps("a"), 10, now=2)
    assert sorted(t.wu_id for t in again) == sorted(t.wu_id for t in tasks[:2])
    assert store.host_reliability("a") == 0.5
    assert store.check_consistency() == []


def test_gpu_app_goes_only_to_hosts_with_a_suitable_gpu(store):
    store.submit("gpuapp", [{"x": 1}], now=0)
    small = HostCaps("small", cpu_only=False, gpus=[GpuCaps(3 << 30, 6.1)])
    old = HostCaps("old", cpu_only=False, gpus=[GpuCaps(8 << 30, 5.2)])
    assert store.fetch_work(HostCaps("cpu"), 10, now=0) == []
    assert store.fetch_work(small, 10, now=0) == []
    assert store.fetch_work(old, 10, now=0) == []
    big = HostCaps("big", cpu_only=False, gpus=[GpuCaps(3 << 30, 6.1), GpuCaps(12 << 30, 8.6)])
    assert len(store.fetch_work(big, 10, now=0)) == 1


def test_submit_rejects_bad_params_naming_index_and_stores_nothing(store):
    with pytest.raises(ValueError, match=r"^params\[2\]: x: expected an integer") as err:
        store.submit("double", [{"x": 1}, {"x": 2}, {"x": "three"}])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="min_quorum"):
        store.submit("double", [{"x": 1}], min_quorum=0)
    with pytest.raises(ValueError, match="max_total_results"):
        store.submit("double", [{"x": 1}], target_nresults=4, max_total_results=3)
    with pytest.raises(ValueError, match="app"):
        store.submit("nope", [{"x": 1}])
    assert store.batches() == []
    assert store.fetch_work(HostCaps("a"), 10) == []


def test_close_and_reopen_mid_batch_loses_nothing(tmp_path):
    store = open_store(tmp_path)
    batch = store.submit("double", [{"x": i} for i in range(30)], now=0)
    work(store, "a", n=30)
    work(store, "b", n=12)
    out_b = store.fetch_work(HostCaps("b"), 5, now=2)  # in flight across the restart
    before = store.batch_status(batch)
    store.close()

    store = open_store(tmp_path)
    after = store.batch_status(batch)
    assert after["wus"] == before["wus"] and after["results"] == before["results"]
    assert after["credit_by_host"] == pytest.approx(before["credit_by_host"])
    store.report("b", [Report(t.result_id, "success", good(t)) for t in out_b], now=3)
    work(store, "b", n=100, now=4)
    st = store.batch_status(batch)
    assert st["done"] and st["results"]["valid"] == 60
    assert store.credit_by_host() == pytest.approx({"a": 30 * CREDIT, "b": 30 * CREDIT})
    assert len(output_lines(store, batch)) == 30
    assert store.check_consistency() == []
    store.close()


def test_assimilator_writes_each_result_once_across_crashes(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    batch = store.submit("double", [{"x": i} for i in range(6)], now=0)
    work(store, "a")
    # Crash after the commit, before the file is written: nothing lands in the file.
    monkeypatch.setattr(ScienceStore, "_flush_outputs", lambda self: None)
    work(store, "b", n=4)
    assert output_lines(store, batch) == []
    store.close()
    monkeypatch.undo()

    store = open_store(tmp_path)
    assert len(output_lines(store, batch)) == 4  # recovered from the database on open
    path = store.output_path(batch)
    with open(path, "a") as fh:
        fh.write('{"wu": 1, "par')  # a torn write from a crash mid-append
    store.close()

    store = open_store(tmp_path)
    work(store, "b", now=5)
    lines = output_lines(store, batch)
    assert sorted(line["wu"] for line in lines) == sorted({line["wu"] for line in lines})
    assert len(lines) == 6
    store.close()
    store = open_store(tmp_path)  # reopening again changes nothing
    assert len(output_lines(store, batch)) == 6
    assert store.check_consistency() == []
    store.close()


def test_output_file_ahead_of_database_is_rebuilt(tmp_path):
    store = open_store(tmp_path)
    batch = store.submit("double", [{"x": i} for i in range(3)], now=0)
    work(store, "a")
    work(store, "b")
    path = store.output_path(batch)
    store.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[:1]) + "\n")  # a line the database does not have
    store = open_store(tmp_path)
    assert path.read_text().splitlines() == lines
    store.close()


def test_export_jsonl_and_csv(store, tmp_path):
    batch = store.submit("double", [{"x": i, "tag": f"t{i}"} for i in range(3)], now=0)
    work(store, "a")
    work(store, "b")
    out = store.export(batch, "csv", tmp_path / "r.csv")
    rows = out.read_text().splitlines()
    assert rows[0] == "wu,host,params.tag,params.x,result.y"
    assert sorted(r.split(",")[-1] for r in rows[1:]) == ["0", "2", "4"]
    text = store.export(batch, "jsonl", tmp_path / "r.jsonl").read_text()
    assert sorted(json.loads(line)["result"]["y"] for line in text.splitlines()) == [0, 2, 4]
    with pytest.raises(ValueError, match="fmt"):
        store.export(batch, "xml", tmp_path / "r.xml")


def test_consistency_checker_catches_planted_violations(store):
    batch = store.submit("double", [{"x": i} for i in range(2)], now=0)
    work(store, "a")
    work(store, "b")
    assert store.check_consistency() == []
    with store.conn:
        store.conn.execute("UPDATE sci_result SET server=1 WHERE id=(SELECT min(id) FROM sci_result)")
        store.conn.execute("UPDATE sci_host_app SET credit = credit + 1 WHERE host_id=(SELECT min(id) FROM sci_host)")
    found = store.check_consistency()
    assert any("still in progress" in v for v in found)
    assert any("credit" in v for v in found)
    assert store.batch_status(batch)["done"]


def test_counting_lines_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"a":1}\n{"b"')
    assert assimilate.count_lines(path) == 1
    assert path.read_text() == '{"a":1}\n'
    assert assimilate.count_lines(tmp_path / "absent") == 0


def test_consensus_needs_a_unique_largest_camp():
    same = lambda a, b: a == b  # noqa: E731
    assert find_consensus(same, [1, 2, 3, 1], 2) == (0, [True, False, False, True])
    assert find_consensus(same, [1, 2, 2, 1], 2) is None  # two camps of two
    assert find_consensus(same, [1, 2], 2) is None
    assert find_consensus(same, [1, 2, 1], 3) == (0, [True, False, True])
    assert find_consensus(same, [1], 2) is None
    assert find_consensus(lambda a, b: 1 / 0, [1, 1], 2) is None  # a crashing compare disagrees


def test_unknown_policy_field_is_a_one_line_error(store):
    with pytest.raises(ValueError, match=r"^quorum: unknown policy field"):
        store.submit("double", [{"x": 1}], quorum=2)


def test_unwritable_output_file_loses_nothing(store, monkeypatch):
    batch = store.submit("double", [{"x": i} for i in range(4)], now=0)
    work(store, "a")
    real = assimilate.append_rows

    def torn(path, rows):
        with open(path, "a") as fh:
            fh.write('{"wu":')  # half a line, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assimilate, "append_rows", torn)
    work(store, "b", n=2)  # the report itself succeeds
    assert store.batch_status(batch)["wus"]["done"] == 2
    monkeypatch.setattr(assimilate, "append_rows", real)
    work(store, "b", now=3)
    assert sorted(line["params"]["x"] for line in output_lines(store, batch)) == [0, 1, 2, 3]
    assert store.check_consistency() == []


_CHILD = """
import sys, itertools
from dataclasses import dataclass
from cluster.science.states import HostCaps
from cluster.science.store import ScienceStore
from jobs.science.tasks import Report

@dataclass(frozen=True)
class Needs:
    gpu: bool = False
    gpu_capable: bool = False
    min_vram_bytes: int = 0
    min_compute_capability: float = 0.0

class App:
    name = "double"; version = 1; needs = Needs(); self_verifying = False; default_quorum = 2
    max_result_bytes = 100
    def validate_params(self, p): return p
    def flops(self, p): return 1e12
    def check_result(self, r): pass
    def compare(self, a, b): return a == b
    def verify(self, p, r): return True

store = ScienceStore(sys.argv[1], sys.argv[2], apps=lambda n: App())
if not store.batches():
    store.submit("double", [{"x": i} for i in range(20000)], now=0)
print("ready", flush=True)
for i in itertools.count():
    host = "h%d" % (i % 3)
    tasks = store.fetch_work(HostCaps(host), 50, now=i)
    store.report(host, [Report(t.result_id, "success", {"y": t.wu_id % 7}) for t in tasks], now=i)
    store.sweep(now=i)
"""


def test_killed_mid_run_reopens_consistent_and_finishes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    args = [sys.executable, "-c", _CHILD, str(tmp_path / "state.db"), str(tmp_path / "out")]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    out = tmp_path / "out" / "batch-1.jsonl"
    deadline = time.monotonic() + 30
    while (not out.exists() or out.stat().st_size < 1000) and time.monotonic() < deadline:
        time.sleep(0.01)  # kill it once some WUs are done and many are in flight
    child.send_signal(signal.SIGKILL)
    child.wait()

    store = open_store(tmp_path)
    assert store.check_consistency() == []
    [info] = store.batches()
    before = store.batch_status(info["batch"])
    assert 0 < before["wus"]["done"] < 20000
    store.sweep(now=1e9)  # what was in flight on the dead workers comes back
    for i in range(100):
        if store.batch_status(info["batch"])["done"]:
            break
        for host in ("h0", "h1", "h2"):
            work(store, host, n=5000, now=1e9 + i, answer=lambda t: {"y": t.wu_id % 7})
    st = store.batch_status(info["batch"])
    assert st["done"] and st["wus"]["done"] == 20000
    assert len(output_lines(store, info["batch"])) == 20000
    assert store.check_consistency() == []
    store.close()


def test_a_cancelled_batch_keeps_what_was_validated_and_sends_nothing_more(store):
    batch = store.submit("double", [{"x": i} for i in range(10)], now=0)
    work(store, "a", n=4, now=1)
    work(store, "b", n=4, now=1)  # 4 units validated
    out = store.fetch_work(HostCaps("c"), 3, now=2)  # 3 copies out
    assert store.batch_status(batch)["wus"]["done"] == 4
    counts = store.cancel(batch, now=3)
    assert counts == {"withdrawn": 6, "aborted": 3}
    st = store.batch_status(batch)
    assert st["done"] and st["wus"] == {"total": 10, "done": 4, "error": 6, "in_progress": 0, "unsent": 0}
    assert st["wu_errors"] == {"cancelled": 6}
    assert store.fetch_work(HostCaps("d"), 100, now=4) == []
    store.report("c", [Report(t.result_id, "success", good(t)) for t in out], now=5)  # late: ignored
    assert set(store.credit_by_host()) == {"a", "b"} and len(output_lines(store, batch)) == 4
    assert store.check_consistency() == []
