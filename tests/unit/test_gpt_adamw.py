import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from jobs.gpt.adamw import AdamW
from jobs.gpt.config import load_config
from jobs.gpt.model import GPT

REPO = Path(__file__).resolve().parents[2]


def _train(make_optimizer, steps=6):
    torch.manual_seed(0)
    model = GPT(replace(load_config("shakespeare-char-cpu", overrides={"n_layer": 1, "n_embd": 32, "n_head": 2,
                                                                       "block_size": 16}).model, vocab_size=20))
    opt = make_optimizer(model.param_groups(0.1))
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randint(0, 20, (4, 16), generator=g)
        _, loss = model(x, x.roll(1, dims=1))
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (i + 1)  # a schedule changes it every step
        opt.step()
        opt.zero_grad()
    return model, opt


def test_steps_match_torch_adamw_bit_for_bit():
    ours, _ = _train(lambda groups: AdamW(groups, lr=1e-3, betas=(0.8, 0.99)))
    torchs, _ = _train(lambda groups: torch.optim.AdamW(groups, lr=1e-3, betas=(0.8, 0.99)))
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), torchs.parameters()))


def test_optimizer_state_moves_between_torch_adamw_and_ours():
    _, torchs = _train(lambda groups: torch.optim.AdamW(groups, lr=1e-3, betas=(0.8, 0.99)))
    model, ours = _train(lambda groups: AdamW(groups, lr=1e-3, betas=(0.8, 0.99)))
    back = AdamW(model.param_groups(0.1), lr=1.0, betas=(0.5, 0.5))
    back.load_state_dict(torchs.state_dict())
    assert back.param_groups[0]["betas"] == (0.8, 0.99) and back.param_groups[0]["weight_decay"] == 0.1
    for a, b in zip(back.state_dict()["state"].values(), torchs.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    theirs = torch.optim.AdamW(model.param_groups(0.1), lr=1.0)
    theirs.load_state_dict(ours.state_dict())  # and a checkpoint of ours loads in torch


def test_a_pool_worker_starts_without_importing_torch_dynamo():
    # torch.optim's optimizers import torch._dynamo when built: seconds of CPU for
    # every worker that starts, or replaces a crashed one, on a busy PC.
    script = """
import sys
import numpy as np
from jobs.gpt.codecs import Broadcast
from jobs.gpt.config import load_config
from jobs.gpt.diloco import LocalTrainer, flat_params
from jobs.gpt.outer import PoolSchedule
cfg = load_config("shakespeare-char-cpu", overrides={"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16,
                                                     "batch_size": 4})
trainer = LocalTrainer(cfg, np.tile(np.arange(10, dtype=np.uint16), 100), 10, seed=0, device="cpu")
msg = Broadcast(flat_params(trainer.model), "fp16").full()
assert trainer.run_round(msg, 2, 0, 128, PoolSchedule(total_tokens=10_000)).steps == 2
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
