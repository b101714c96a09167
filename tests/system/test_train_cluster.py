"""Training as a cluster job, on real Ray nodes on loopback: placement on
the fastest fitting device, logs, stop, sample, and resume on another node
when the first one dies."""
import json
import signal

import pytest
from localcluster import REPO, salvage

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason=f"training corpus not found at {CORPUS}")
TINY = ["--set", "n_layer=2", "--set", "n_head=2", "--set", "n_embd=64", "--set", "block_size=32",
        "--set", "warmup_iters=10", "--set", "lr_decay_iters=300", "--set", "eval_iters=5",
        "--set", "log_interval=5"]


@pytest.fixture(scope="module")
def pool(local_cluster, tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec")
    # The same CPU does the work; the spec files tell the head which PC is "faster".
    (spec / "fast.json").write_text(json.dumps([{"name": "RTX 3060", "vram": "12GB", "cc": "8.6", "gflops": 900}]))
    (spec / "slow.json").write_text(json.dumps([{"name": "GTX 1060", "vram": "3GB", "cc": "6.1", "gflops": 300}]))
    local_cluster.join("fast", f"@{spec / 'fast.json'}")
    local_cluster.join("slow", f"@{spec / 'slow.json'}")
    for name in ("fast", "slow"):
        local_cluster.wait_state(name, "alive", timeout=90)
    return local_cluster


def submit(pool, *extra: str) -> int:
    out = salvage("train", "submit", "--state-dir", str(pool.state_dir), "--data", str(CORPUS), *TINY, *extra)
    return int(out.stdout.strip().splitlines()[-1])


def logs(pool, job: int) -> str:
    return salvage("train", "logs", "--state-dir", str(pool.state_dir), str(job)).stdout


def job_row(pool, job: int) -> dict:
    out = salvage("train", "list", "--state-dir", str(pool.state_dir), "--json").stdout
    return next(j for j in json.loads(out) if j["id"] == job)


def wait_job(pool, job: int, states=("done", "failed", "stopped"), timeout=240) -> dict:
    return pool.wait_for(lambda: (j := job_row(pool, job))["state"] in states and j, timeout, f"job {job} in {states}")


def test_a_job_trains_on_the_fastest_pc_and_its_loss_falls(pool):
    job = submit(pool, "--set", "max_iters=60", "--set", "eval_interval=20")
    row = wait_job(pool, job)
    assert row["state"] == "done", row
    assert row["host"] == "fast"
    text = logs(pool, job)
    assert "placed on fast" in text and "tok/s" in text and "ETA" in text
    vals = [float(line.split("val ")[1].split(",")[0]) for line in text.splitlines() if ", val " in line]
    assert len(vals) == 3 and vals[-1] < vals[0] < 4.2
    out = salvage("train", "sample", "--state-dir", str(pool.state_dir), str(job), "--prompt", "ROMEO:",
                  "--tokens", "50").stdout
    assert out.startswith("ROMEO:") and len(out) > 40


def test_stop_keeps_the_checkpoint_and_sampling_works_during_and_after(pool):
    job = submit(pool, "--set", "max_iters=5000", "--set", "eval_interval=20")
    pool.wait_for(lambda: ", val " in logs(pool, job), 120, "a first evaluation")
    during = salvage("train", "sample", "--state-dir", str(pool.state_dir), str(job), "--tokens", "20")
    assert during.returncode == 0 and len(during.stdout) >= 20
    assert "stop" in salvage("train", "stop", "--state-dir", str(pool.state_dir), str(job)).stdout
    row = wait_job(pool, job, timeout=120)
    assert row["state"] == "stopped" and row["has_checkpoint"] and row["iter"] < 5000
    assert "stopped at iter" in logs(pool, job)


def test_a_job_whose_node_dies_resumes_on_another_from_its_checkpoint(pool):
    job = submit(pool, "--set", "max_iters=600", "--set", "eval_interval=20")
    pool.wait_for(lambda: job_row(pool, job)["host"] == "fast" and ", val " in logs(pool, job), 120,
                  "a checkpoint on the fast PC")
    pool.stop_agent("fast", signal.SIGKILL)
    row = wait_job(pool, job, timeout=300)
    text = logs(pool, job)
    assert row["state"] == "done", text
    assert row["host"] == "slow" and row["attempt"] == 2
    assert "requeued" in text
    resumed = [line for line in text.splitlines() if "resuming from" in line]
    assert resumed and int(resumed[0].rsplit("iter ", 1)[1]) >= 20


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "preset: expected one of"),
    (["--set", "colour=1"], "colour: unknown config key"),
    (["--set", "max_iters=abc"], "max_iters: expected int"),
    (["--set", "n_embd=130"], "n_embd: expected a multiple of n_head"),
    (["--data", "/nonexistent/corpus.txt"], "data: path"),
])
def test_bad_submissions_get_one_line_errors_and_start_nothing(tmp_path, args, message):
    proc = salvage("train", "submit", "--state-dir", str(tmp_path), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_binary_or_short_corpus_is_refused(tmp_path):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    for path, message in ((binary, "binary"), (short, "block_size")):
        proc = salvage("train", "submit", "--state-dir", str(tmp_path), "--data", str(path), check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
