"""AdamW with decoupled weight decay, computed as torch.optim.AdamW computes it.

Why not torch.optim.AdamW itself: building any torch.optim optimizer imports
torch._dynamo, which adds about a third to the CPU time of a pool worker's start
(benchmarks/worker_start.py). Every worker that replaces a crashed one pays that
again on a PC whose cores are already training. This class needs only torch's
tensor ops, and does the steps of one parameter group in a few multi-tensor calls.

Its state_dict has torch's layout, so single-worker checkpoints written with
torch.optim.AdamW resume here and the other way round.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    def __init__(self, param_groups: Iterable[dict], lr: float, betas: tuple[float, float], eps: float = 1e-8):
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0, **g,
                              "params": list(g["params"])} for g in param_groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        """Drops the gradients (torch's set_to_none=True): the next backward allocates them."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self._state_of(p) for p in params]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            for s in states:
                s["step"] += 1
            steps = [s["step"].item() for s in states]
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, [(1 - beta2 ** k) ** 0.5 for k in steps])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / (1 - beta1 ** k) for k in steps])

    def _state_of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state.get(p)
        if s is None:
            s = self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
        return s

    def state_dict(self) -> dict:
        index: dict[torch.Tensor, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[p]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        groups = saved["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state does not match the model's parameter groups")
        self.state = {}
        for group, old in zip(self.param_groups, groups):
            for key in ("lr", "betas", "eps", "weight_decay"):
                group[key] = tuple(old[key]) if key == "betas" else old[key]
            for p, i in zip(group["params"], old["params"]):
                if i in saved["state"]:
                    s = saved["state"][i]
                    self.state[p] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).cpu().clone(),
                                     "exp_avg": s["exp_avg"].to(p.device, p.dtype).clone(),
                                     "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype).clone()}
