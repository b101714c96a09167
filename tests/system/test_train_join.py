"""A pool worker that finishes loading mid-round is let into the round at once, not
at the head's next look for new PCs: a driver of its own on a one-node Ray."""
import time

import ray

from cluster.train import rounds
from cluster.train.rounds import Member, PoolRun


@ray.remote(num_cpus=0)
def loaded():
    return {"device": "cpu"}


@ray.remote(num_cpus=0)
def round_result(seconds: float):
    time.sleep(seconds)
    return "delta"


def test_a_worker_that_finishes_loading_joins_the_round_at_once(ray_here, monkeypatch):
    monkeypatch.setattr(rounds, "MEMBERS_POLL_S", 600.0)  # the next look is long after the round
    run = PoolRun.__new__(PoolRun)  # await_round needs only the members
    new = Member("b/cpu", "b", None, "node", 1.0, actor=None, starting=loaded.remote())
    training = Member("a/cpu", "a", None, "node", 1.0, actor=None, info={"device": "cpu"})
    run.members = {"a/cpu": training, "b/cpu": new}
    joined = []

    def join():
        joined.append(time.monotonic())
        new.info = ray.get(new.starting)  # what admit does

    result = round_result.remote(3.0)
    results = run.await_round({"a/cpu": result}, {"a/cpu": training}, deadline_s=60.0, join=join)
    assert results[result][0] == "delta"
    # b was let in while a's round still trained, once, not at the next look
    assert len(joined) == 1 and joined[0] < results[result][1] - 1.0
