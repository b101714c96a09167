"""What `salvage demo` shows while it runs: one snapshot of the head's API (the
PCs, the training job and its last round, the science batches, the credit),
drawn as a live view, and the lines it prints as things happen. Pure functions
of the API's replies, so they are tested without a cluster."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text


@dataclass
class Snapshot:
    """The head's view at one moment, as the demo polls it."""

    nodes: list[dict] = field(default_factory=list)  # /api/status
    job: dict | None = None  # the demo's training job, from /api/train/list
    last_round: dict | None = None  # the job's latest round report (its workers' tokens/s)
    val_loss: float | None = None
    batches: list[dict] = field(default_factory=list)  # the demo's batches, from /api/science/status
    credit: dict[str, float] = field(default_factory=dict)  # credit by host, over every batch


def worker_rates(last_round: dict | None) -> dict[str, list[tuple[str, float]]]:
    """Host -> (device, tokens/s) of each of its pool workers in the last round."""
    out: dict[str, list[tuple[str, float]]] = {}
    for w in (last_round or {}).get("workers", []):
        host, _, device = w["worker"].partition("/")
        out.setdefault(host, []).append((device, w["tokens_per_s"]))
    return out


def hardware(node: dict) -> str:
    if node["cpu_only"]:
        return f"CPU only, {node['speed_gflops']:,.0f} GFLOP/s"
    cards = ", ".join(f"{g['name']} {g['vram_bytes'] / 2**30:.0f} GB cc {g['compute_capability']}" for g in node["gpus"])
    return f"{cards} ({'simulated, ' if node.get('simulated') else ''}{node['speed_gflops']:,.0f} GFLOP/s)"


def doing(node: dict, rates: dict[str, list[tuple[str, float]]]) -> str:
    if node["state"] != "alive":
        return node["state"]
    parts = [f"training on {device} at {rate:,.0f} tok/s" for device, rate in rates.get(node["name"], [])]
    parts += [r for r in node.get("running", []) if r.startswith("science")]
    if node.get("blocked"):
        parts.append(node["blocked"])
    return "; ".join(parts) or "idle"


def pcs_table(snap: Snapshot, duty: dict[str, float]) -> Table:
    """`duty`: the share of time each PC's owner lets work run."""
    training = snap.job is not None and snap.job["state"] == "running"
    rates = worker_rates(snap.last_round) if training else {}
    table = Table(title="PCs", title_justify="left", expand=False)
    for col in ("PC", "hardware", "duty", "doing now", "credit"):
        table.add_column(col, justify="right" if col == "credit" else "left")
    for node in snap.nodes:
        share = duty.get(node["name"])
        table.add_row(node["name"], hardware(node), "-" if share is None else f"{share:.0%}",
                      Text(doing(node, rates)), f"{snap.credit.get(node['name'], 0.0):.3g}")
    return table


def training_text(snap: Snapshot) -> Text:
    job = snap.job
    if job is None:
        return Text("training: not started yet (science goes first while the PCs are free)")
    line = f"training job {job['id']} ({job['state']})"
    if job.get("iter") is not None:
        line += f": iter {job['iter']:,}/{job['max_iters']:,}"
    r = snap.last_round or {}
    if r.get("train_loss") is not None:
        line += f", loss {r['train_loss']:.3f}"
    if snap.val_loss is not None:
        line += f" (val {snap.val_loss:.3f})"
    if r.get("tokens_per_s"):
        line += f", {r['tokens_per_s']:,.0f} tok/s over {len(r.get('workers', []))} workers"
    if job["state"] == "running" and r.get("eta_s") is not None:
        line += f", ETA {r['eta_s']:.0f} s"
    return Text(line)


def science_table(snap: Snapshot) -> Table:
    table = Table(title="science", title_justify="left")
    for col in ("batch", "app", "valid", "out", "waiting"):
        table.add_column(col)
    for b in snap.batches:
        w = b["wus"]
        table.add_row(str(b["batch"]), b["app"], f"{w['done']}/{w['total']} units", str(b["results"]["in_progress"]),
                      Text("done" if b["done"] else "\n".join(b.get("waiting") or ()) or "-"))
    return table


def view(snap: Snapshot, duty: dict[str, float], phase: str, left_s: float) -> Group:
    clock = f"{left_s:.0f} s left" if left_s > 0 else "over time, finishing"
    return Group(Text(f"salvage demo: {phase} ({clock}; Ctrl-C stops it cleanly)", style="bold"),
                 pcs_table(snap, duty), training_text(snap), science_table(snap))


def round_line(d: dict) -> str:
    """A pool round as one line: the pool's loss and speed, then each worker's."""
    stamp = time.strftime("%H:%M:%S", time.localtime(d.get("t_wall") or time.time()))
    if "train_loss" not in d:
        return f"{stamp} round {d['round']}: val loss {d['val_loss']:.3f}"
    workers = ", ".join(f"{w['worker']} {w['tokens_per_s']:,}" for w in d.get("workers", []))
    eta = f", ETA {d['eta_s']:.0f} s" if d.get("eta_s") is not None else ""
    return (f"{stamp} round {d['round']}: iter {d['iter']:,}/{d['max_iters']:,}, loss {d['train_loss']:.3f}, "
            f"{d['tokens_per_s']:,.0f} tok/s ({workers}){eta}")

