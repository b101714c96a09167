"""What `salvage demo` shows, drawn from the head's API replies: each worker's
tokens/s (while it trains), the loss and the ETA, the units turning valid, why
a batch waits, and each PC's credit."""
from rich.console import Console

from cluster.cli.demo_view import Snapshot, round_line, view

ROUND = {"round": 4, "iter": 600, "max_iters": 2000, "train_loss": 2.4567, "tokens_per_s": 21000.0, "eta_s": 67.0,
         "t_wall": 0.0, "workers": [{"worker": "pc-rtx3060/gpu0", "steps": 40, "tokens_per_s": 12000, "wait_s": 0.1},
                                    {"worker": "pc-office/cpu", "steps": 20, "tokens_per_s": 9000, "wait_s": 0.2}]}
NODES = [
    {"name": "pc-rtx3060", "state": "alive", "cpu_only": False, "speed_gflops": 60.0, "simulated": True,
     "gpus": [{"name": "RTX 3060", "vram_bytes": 12 * 2**30, "compute_capability": "8.6"}], "running": []},
    {"name": "pc-office", "state": "alive", "cpu_only": True, "speed_gflops": 25.0, "gpus": [],
     "running": ["science (1 task)"]},
]
BATCHES = [{"batch": 1, "app": "hp-fold", "done": True, "wus": {"done": 12, "total": 12},
            "results": {"in_progress": 0}, "waiting": []},
           {"batch": 2, "app": "lj-md", "done": False, "wus": {"done": 0, "total": 6},
            "results": {"in_progress": 0}, "waiting": ["all hosts busy with training"]}]


def shown(renderable) -> str:
    console = Console(record=True, width=160)
    console.print(renderable)
    return console.export_text()


def test_the_live_view_shows_workers_loss_eta_science_and_credit():
    job = {"id": 1, "state": "running", "iter": 600, "max_iters": 2000}
    snap = Snapshot(nodes=NODES, job=job, last_round=ROUND, val_loss=2.31, batches=BATCHES,
                    credit={"pc-rtx3060": 12.5})
    text = shown(view(snap, {"pc-rtx3060": 1.0, "pc-office": 1.0}, "training", 42))
    assert "training on gpu0 at 12,000 tok/s" in text and "science (1 task)" in text
    assert "loss 2.457 (val 2.310)" in text and "ETA 67 s" in text and "iter 600/2,000" in text
    assert "12/12 units" in text and "all hosts busy with training" in text
    assert "RTX 3060 12 GB cc 8.6 (simulated, 60 GFLOP/s)" in text and "CPU only, 25 GFLOP/s" in text
    assert "12.5" in text and "42 s left" in text


def test_a_round_is_one_line_with_each_workers_tokens_per_second():
    line = round_line(ROUND)
    assert "round 4: iter 600/2,000, loss 2.457, 21,000 tok/s (pc-rtx3060/gpu0 12,000, pc-office/cpu 9,000)" in line
    assert line.endswith("ETA 67 s")


def test_workers_show_as_training_only_while_the_job_runs():
    snap = Snapshot(nodes=NODES, job={"id": 1, "state": "stopped", "iter": 900, "max_iters": 2000}, last_round=ROUND)
    text = shown(view(snap, {}, "science after training", 10))
    assert "training on gpu0" not in text and "job 1 (stopped)" in text
