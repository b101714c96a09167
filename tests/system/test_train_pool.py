"""One training job across several PCs (DiLoCo rounds) on real Ray nodes on
loopback: the loss falls, speeds set the steps, a PC that dies or joins
mid-job, a head restart, and bad pool options."""
import json
import re
import signal

import pytest
from localcluster import REPO, salvage

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason=f"training corpus not found at {CORPUS}")
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=48", "--set", "block_size=32",
        "--set", "warmup_iters=10", "--set", "eval_iters=5", "--set", "eval_interval=50"]


@pytest.fixture(scope="module")
def pool(local_cluster):
    local_cluster.join("a", "", "--duty-cycle", "1")
    local_cluster.join("b", "", "--duty-cycle", "1")
    local_cluster.join("slow", "", "--duty-cycle", "0.25")
    for name in ("a", "b", "slow"):
        local_cluster.wait_state(name, "alive", timeout=90)
    return local_cluster


def submit(pool, iters: int, *extra: str) -> int:
    out = salvage("train", "submit", "--state-dir", str(pool.state_dir), "--data", str(CORPUS), *TINY,
                  "--set", f"max_iters={iters}", "--set", f"lr_decay_iters={iters}", "--workers", "all", *extra)
    return int(out.stdout.strip().splitlines()[-1])


def job_row(pool, job: int) -> dict:
    out = salvage("train", "list", "--state-dir", str(pool.state_dir), "--json").stdout
    return next(j for j in json.loads(out) if j["id"] == job)


def logs(pool, job: int) -> str:
    return salvage("train", "logs", "--state-dir", str(pool.state_dir), str(job)).stdout


def rounds(text: str) -> list[dict]:
    """Each round line with its per-worker lines: {round, loss, workers: {name: steps}}."""
    out = []
    for line in text.splitlines():
        m = re.search(r"round (\d+): iter \d+/\d+, loss ([\d.]+)", line)
        if m:
            out.append({"round": int(m[1]), "loss": float(m[2]), "workers": {}})
            continue
        w = re.match(r"\s+(\S+)\s+(\d+) steps\s+(\d+) tok/s", line)
        if w and out:
            out[-1]["workers"][w[1]] = (int(w[2]), int(w[3]))
    return out


def vals(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"\): val ([\d.]+)", text)]


def wait_job(pool, job: int, timeout=300) -> dict:
    return pool.wait_for(lambda: (j := job_row(pool, job))["state"] in ("done", "failed", "stopped") and j,
                         timeout, f"job {job} to end")


def wait_round(pool, job: int, n: int, timeout=180) -> None:
    pool.wait_for(lambda: len(rounds(logs(pool, job))) >= n, timeout, f"job {job} round {n}")


def test_the_pool_trains_together_its_loss_falls_and_speed_sets_the_steps(pool):
    job = submit(pool, 300, "--sync-steps", "8")
    row = wait_job(pool, job)
    text = logs(pool, job)
    assert row["state"] == "done", text
    rs = rounds(text)
    assert len(rs) >= 5
    assert all(set(r["workers"]) == {"a/cpu", "b/cpu", "slow/cpu"} for r in rs), text
    assert rs[-1]["loss"] < 3.3 < rs[0]["loss"], text  # from above the unigram entropy (3.3) to below it
    # Nothing is measured before the first round, so it runs the plan: 8 steps on the fastest.
    assert max(steps for steps, _ in rs[0]["workers"].values()) == 8, text
    v = vals(text)
    assert len(v) >= 4 and v[-1] < v[0] - 0.2 and v[-1] < 3.3  # below the unigram entropy (3.3)
    # The PC at a quarter duty cycle measures slower and gets fewer steps per round. The last
    # round only spends the job's remaining few steps, one each, so it shows nothing. A round
    # where this box stalls the fast PC may tie, so the test looks at most rounds and the sum.
    later = rs[len(rs) // 2:-1]
    fewer = sum(r["workers"]["slow/cpu"][0] < r["workers"]["a/cpu"][0] for r in later)
    assert fewer > len(later) / 2, text
    assert sum(r["workers"]["slow/cpu"][0] for r in later) < 0.6 * sum(r["workers"]["a/cpu"][0] for r in later), text
    assert sum(r["workers"]["slow/cpu"][1] for r in later) < 0.6 * sum(r["workers"]["a/cpu"][1] for r in later)
    assert row["pool"] and row["state"] == "done"
    listing = salvage("train", "list", "--state-dir", str(pool.state_dir)).stdout
    assert "pool of 3" in listing
    sample = salvage("train", "sample", "--state-dir", str(pool.state_dir), str(job), "--prompt", "ROMEO:",
                     "--tokens", "30").stdout
    assert sample.startswith("ROMEO:") and len(sample) > 30


def test_a_pc_added_mid_job_contributes_from_its_first_round(pool):
    job = submit(pool, 50_000, "--sync-steps", "8")  # stopped once the new PC has been seen
    wait_round(pool, job, 3)
    pool.join("late", "", "--duty-cycle", "1")
    pool.wait_state("late", "alive", timeout=90)
    # It joins the round it finished loading in, for the time left, or the next one.
    joins = r"worker late/cpu joins (?:at )?round (\d+)"
    pool.wait_for(lambda: re.search(joins, logs(pool, job)), 60, "the late PC to join")
    salvage("train", "stop", "--state-dir", str(pool.state_dir), str(job))
    wait_job(pool, job)
    text = logs(pool, job)
    first = int(re.search(joins, text)[1])
    by_round = {r["round"]: r for r in rounds(text)}
    assert first > 3
    assert by_round[first]["workers"]["late/cpu"][0] > 0, text  # its steps count in the round it joined


def test_a_pc_that_dies_mid_round_is_left_out_and_the_job_goes_on(pool):
    job = submit(pool, 50_000, "--sync-steps", "8")
    wait_round(pool, job, 3)
    pool.stop_agent("late", signal.SIGKILL)  # a power cut: the whole tree dies
    pool.wait_for(lambda: "worker late/cpu left out" in logs(pool, job), 60, "the dead PC to be left out")
    left = len(rounds(logs(pool, job)))
    wait_round(pool, job, left + 15)
    salvage("train", "stop", "--state-dir", str(pool.state_dir), str(job))
    row = wait_job(pool, job)
    text = logs(pool, job)
    assert row["state"] == "stopped", text
    after = [r for r in rounds(text) if r["round"] > left]
    assert all("late/cpu" not in r["workers"] and len(r["workers"]) == 3 for r in after), text
    assert after[-1]["loss"] < after[0]["loss"], text


def test_a_killed_worker_is_replaced_on_its_pc_and_rejoins_the_round_it_died_in(pool):
    # Rounds of 1500 steps on the fastest PC, some seconds: a new worker loads well inside one.
    job = submit(pool, 50_000, "--sync-steps", "1500")
    wait_round(pool, job, 2)  # measured speeds: from now on rounds run on a time budget
    assert pool.kill_training_worker("b") == 1  # a crash: the PC, its agent and Ray node stay
    pool.wait_for(lambda: re.search(r"worker b/cpu joins round \d+ mid-way", logs(pool, job)), 120,
                  "a new worker on b to join mid-round")
    salvage("train", "stop", "--state-dir", str(pool.state_dir), str(job))
    wait_job(pool, job)
    text = logs(pool, job)
    died = int(re.search(r"worker b/cpu left out: died in round (\d+)", text)[1])
    back = int(re.search(r"worker b/cpu joins round (\d+) mid-way", text)[1])
    assert back == died, text
    by_round = {r["round"]: r for r in rounds(text)}
    steps = by_round[back]["workers"]
    assert 0 < steps["b/cpu"][0] < steps["a/cpu"][0], text  # its steps count, for the time it had


def test_a_head_restart_resumes_the_job_from_its_checkpoint(pool):
    job = submit(pool, 3000, "--sync-steps", "8", "--pool-set", "checkpoint_rounds=2")
    wait_round(pool, job, 5)
    salvage("cluster", "down", "--state-dir", str(pool.state_dir))
    pool.up()
    row = wait_job(pool, job, timeout=400)
    text = logs(pool, job)
    assert row["state"] == "done", text
    resumed = re.search(r"resuming from the pool checkpoint at round (\d+)", text)
    assert resumed and int(resumed[1]) >= 4, text
    assert row["attempt"] == 2
    assert vals(text)[-1] < 3.3


def test_a_job_whose_workers_all_fail_to_start_fails_with_their_error(pool, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text())
    out = salvage("train", "submit", "--state-dir", str(pool.state_dir), "--data", str(corpus), *TINY,
                  "--workers", "all")
    job = int(out.stdout.strip().splitlines()[-1])
    corpus.unlink()  # gone before the workers read it: each one raises while it starts
    row = wait_job(pool, job, timeout=120)
    assert row["state"] == "failed", logs(pool, job)
    assert row["error"].startswith("no worker could start:") and "corpus.txt" in row["error"], row["error"]
    assert "is tried again in 30 s" in logs(pool, job)


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "workers: expected at least 1"),
    (["--workers", "many"], "workers: expected a count or 'all'"),
    (["--workers", "2", "--sync-steps", "often"], "sync-steps: expected a positive number"),
    (["--workers", "2", "--pool-set", "outer_lr=5"], "outer_lr: expected a value in (0, 2]"),
    (["--workers", "2", "--pool-set", "colour=1"], "colour: not a pool option"),
])
def test_bad_pool_options_get_one_line_errors(tmp_path, args, message):
    proc = salvage("train", "submit", "--state-dir", str(tmp_path), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
