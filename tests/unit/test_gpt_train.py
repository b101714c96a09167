import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs.gpt import checkpoint as ckpt_mod
from jobs.gpt import train as train_mod
from jobs.gpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jobs.gpt.config import load_config
from jobs.gpt.sample import SampleError, sample
from jobs.gpt.tokenizer import TokenizerError
from jobs.gpt.train import TrainingDiverged, train

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"

TINY = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.1,
    "batch_size": 4, "max_iters": 30, "warmup_iters": 5, "lr_decay_iters": 30,
    "learning_rate": 3e-3, "eval_interval": 10, "eval_iters": 2, "log_interval": 5,
}


def tiny(**overrides):
    return load_config("shakespeare-char-cpu", overrides={**TINY, **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    # Shared 2-core box; also makes CPU runs bit-for-bit repeatable within a process.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300)))
    return str(path)


def run(cfg, corpus, workdir, **kw):
    progress = []
    result = train(cfg, corpus, workdir, device="cpu", on_progress=progress.append,
                   on_log=lambda _l: None, cache_dir=workdir.parent / "cache", **kw)
    return result, progress


def test_progress_and_summary(corpus, tmp_path):
    lines = []
    result = train(tiny(max_iters=10), corpus, tmp_path / "run", device="cpu", on_progress=(progress := []).append,
                   on_log=lines.append, cache_dir=tmp_path / "cache")
    # On a CPU the thread count is what decides the speed: the log and summary say it.
    assert any(line.startswith("device: cpu (cpu, 1 thread)") for line in lines), lines
    assert result["threads"] == 1
    assert [p["iter"] for p in progress] == [5, 10]
    assert {"iter", "max_iters", "train_loss", "tokens_per_s", "eta_s", "lr"} <= progress[0].keys()
    assert "val_loss" not in progress[0] and "val_loss" in progress[1]
    assert result["iters"] == 10 and result["stopped"] is False
    assert result["params"] > 0 and result["precision"] == "float32" and result["device"] == "cpu"
    assert result["tokens_per_s"] > 0 and result["val_loss"] == progress[1]["val_loss"]
    assert Path(result["checkpoint"]).exists()


def test_resume_matches_uninterrupted_run(corpus, tmp_path):
    full, full_progress = run(tiny(), corpus, tmp_path / "a")

    calls = 0

    def stop_at_13():
        nonlocal calls
        calls += 1
        return calls > 13

    first, first_progress = run(tiny(), corpus, tmp_path / "b", should_stop=stop_at_13)
    assert first["stopped"] and first["iters"] == 13
    second, second_progress = run(tiny(), corpus, tmp_path / "b")
    assert second["resumed_from"] == 13 and second["iters"] == 30

    def losses(ps):
        return [(p["iter"], p["train_loss"], p.get("val_loss")) for p in ps]

    assert losses(first_progress + second_progress) == losses(full_progress)
    a = load_checkpoint(tmp_path / "a")["model"]
    b = load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_written_with_torch_adamw_resumes_exactly(corpus, tmp_path, monkeypatch):
    """salvage used torch.optim.AdamW before its own: those checkpoints still resume."""
    full, _ = run(tiny(max_iters=20), corpus, tmp_path / "a")
    with monkeypatch.context() as m:
        t = tiny().train
        m.setattr(train_mod, "build_optimizer", lambda model, cfg: torch.optim.AdamW(
            model.param_groups(t.weight_decay), lr=t.learning_rate, betas=(t.beta1, t.beta2)))
        run(tiny(max_iters=10), corpus, tmp_path / "b")
    resumed, _ = run(tiny(max_iters=20), corpus, tmp_path / "b")
    assert resumed["resumed_from"] == 10
    a = load_checkpoint(tmp_path / "a")["model"]
    b = load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_not_retrained_and_can_be_extended(corpus, tmp_path):
    run(tiny(max_iters=10), corpus, tmp_path / "r")
    again, progress = run(tiny(max_iters=10), corpus, tmp_path / "r")
    assert progress == [] and again["iters"] == 10 and again["val_loss"] is not None
    longer, progress = run(tiny(max_iters=15), corpus, tmp_path / "r")
    assert longer["iters"] == 15 and [p["iter"] for p in progress] == [15]


def test_resume_refuses_other_config_or_tokenizer(corpus, tmp_path):
    run(tiny(max_iters=5), corpus, tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"^n_layer: checkpoint was trained with 2, this run asks for 3"):
        run(tiny(max_iters=5, n_layer=3), corpus, tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"^tokenizer:"):
        run(tiny(max_iters=5, tokenizer="byte"), corpus, tmp_path / "r")
    other = tmp_path / "other.txt"
    other.write_text(Path(corpus).read_text().upper())
    with pytest.raises(CheckpointError, match=r"^tokenizer: .*vocabulary of \d+ characters") as exc:
        run(tiny(max_iters=5), str(other), tmp_path / "r")
    assert "\n" not in str(exc.value)


def test_corrupt_checkpoint_is_reported_and_kept(corpus, tmp_path):
    workdir = tmp_path / "r"
    workdir.mkdir()
    garbage = b"PK\x03\x04 definitely not a checkpoint" * 10
    (workdir / "ckpt.pt").write_bytes(garbage)
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* is corrupt") as exc:
        run(tiny(max_iters=5), corpus, workdir)
    assert "\n" not in str(exc.value)
    assert (workdir / "ckpt.pt").read_bytes() == garbage


def test_incomplete_checkpoint_cannot_be_resumed_and_is_kept(corpus, tmp_path):
    run(tiny(max_iters=5), corpus, tmp_path / "r")
    state = load_checkpoint(tmp_path / "r")
    del state["optimizer"]
    save_checkpoint(tmp_path / "r" / "ckpt.pt", state)
    before = (tmp_path / "r" / "ckpt.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* cannot be resumed \(KeyError"):
        run(tiny(max_iters=10), corpus, tmp_path / "r")
    assert (tmp_path / "r" / "ckpt.pt").read_bytes() == before


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"iter": 1, "model": {}, "config": {}, "tokenizer": {}})

    def torn_save(obj, fh):
        fh.write(b"PK\x03\x04half a zip")
        raise OSError("disk unplugged")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"iter": 2, "model": {}, "config": {}, "tokenizer": {}})
    assert load_checkpoint(path)["iter"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    # A writer saving ~8 MB checkpoints back to back, killed at an arbitrary moment.
    script = (
        "import sys, torch\n"
        "from jobs.gpt.checkpoint import save_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    save_checkpoint(sys.argv[1], {'iter': i, 'model': {'w': torch.full((2_000_000,), float(i))},"
        " 'config': {}, 'tokenizer': {}})\n"
        "    print(i, flush=True)\n"
    )
    path = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    try:
        for _ in range(3):
            proc.stdout.readline()
        time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    state = load_checkpoint(path)
    assert state["iter"] >= 3 and torch.all(state["model"]["w"] == float(state["iter"]))
    # The dead writer's temp file (if any) is swept by the next training run.
    ckpt_mod.remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    real_step = train_mod.train_step
    steps = 0

    def poisoned_step(model, *a, **k):
        nonlocal steps
        steps += 1
        if steps == 13:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return real_step(model, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", poisoned_step)
    with pytest.raises(TrainingDiverged) as exc:
        run(tiny(), corpus, tmp_path / "r")
    msg = str(exc.value)
    assert msg.startswith("train_loss: became nan") and "iter 10" in msg and "\n" not in msg
    state = load_checkpoint(tmp_path / "r")
    assert state["iter"] == 10
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_loss_falls_on_real_corpus(tmp_path):
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE}")
    cfg = tiny(max_iters=300, lr_decay_iters=300, eval_interval=300, eval_iters=4, dropout=0.0, batch_size=32,
               log_interval=10)
    result, progress = run(cfg, str(SHAKESPEARE), tmp_path / "r")
    assert progress[0]["train_loss"] > 3.5  # near ln(65) = 4.17 at the start
    # Below the ~3.3 of a model that only learns character frequencies.
    assert result["val_loss"] < 2.9


def test_sampling_from_checkpoint(corpus, tmp_path):
    run(tiny(max_iters=10), corpus, tmp_path / "r")
    text = sample(tmp_path / "r", prompt="line ", tokens=40, seed=1)
    assert text.startswith("line ") and len(text) == len("line ") + 40
    assert sample(tmp_path / "r" / "ckpt.pt", prompt="line ", tokens=40, seed=1) == text
    assert set(text) <= set(Path(corpus).read_text())
    with pytest.raises(TokenizerError, match=r"^prompt: character 'Z'"):
        sample(tmp_path / "r", prompt="Zebra")
    with pytest.raises(SampleError, match=r"^tokens:"):
        sample(tmp_path / "r", tokens=0)
    with pytest.raises(SampleError, match=r"^temperature:"):
        sample(tmp_path / "r", temperature=0)
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* does not exist"):
        sample(tmp_path / "missing")


def test_cli_trains_and_reports_bad_input(corpus, tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in TINY.items() if k in
                    ("n_layer", "n_head", "n_embd", "block_size")) + "[train]\nbatch_size = 4\neval_interval = 5\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "jobs.gpt.train", "--data", corpus, "--config", str(toml),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    ok = subprocess.run(base + ["--out", str(tmp_path / "r"), "--max-iters", "10"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "parameters" in ok.stdout and "iter 10/10" in ok.stdout and "val " in ok.stdout
    bad = subprocess.run(base + ["--out", str(tmp_path / "r2"), "--max-iters", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: max_iters: expected a positive integer, got 0"


def test_gradient_accumulation_matches_whole_batch(corpus, tmp_path):
    whole, _ = run(tiny(max_iters=10, dropout=0.0), corpus, tmp_path / "whole")
    split, _ = run(tiny(max_iters=10, dropout=0.0, micro_batch_size=1), corpus, tmp_path / "split")
    assert (split["micro_batch_size"], split["grad_accum_steps"]) == (1, 4)
    assert split["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-4)


def test_out_of_memory_retries_same_step_with_smaller_micro_batch(corpus, tmp_path, monkeypatch):
    real_step = train_mod.train_step
    sizes = []

    def step_that_ooms_on_big_batches(model, optimizer, micro_batches, **k):
        sizes.append(micro_batches[0][0].shape[0])
        if micro_batches[0][0].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return real_step(model, optimizer, micro_batches, **k)

    monkeypatch.setattr(train_mod, "train_step", step_that_ooms_on_big_batches)
    lines = []
    result = train(tiny(max_iters=5), corpus, tmp_path / "r", device="cpu", on_log=lines.append,
                   cache_dir=tmp_path / "cache")
    assert sizes[:2] == [4, 2] and result["iters"] == 5
    assert (result["micro_batch_size"], result["grad_accum_steps"]) == (2, 2)
    assert any("out of memory" in line for line in lines)
