"""The `cluster status` table."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

STATE_STYLE = {"alive": "green", "lost": "red", "left": "dim"}


def render_status(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"salvage cluster — head {data['head']}")
    for col in ("host", "state", "GPUs (model, VRAM, compute)", "speed GFLOP/s", "running"):
        table.add_column(col)
    for node in data["nodes"]:
        gpus = "\n".join(
            f"{g['index']}: {g['name']}, {g['vram_bytes'] / 2**30:.0f} GiB, cc {g['compute_capability']}"
            + (" [red](lost)[/]" if g.get("lost") else "")
            for g in node["gpus"]) or f"CPU only ({node['cpu']['cores']} cores)"
        style = STATE_STYLE.get(node["state"], "")
        table.add_row(node["name"], f"[{style}]{node['state']}[/]", gpus, f"{node['speed_gflops']:.1f}",
                      ", ".join(node["running"]) or "-")
    console.print(table)
    alive = sum(n["state"] == "alive" for n in data["nodes"])
    console.print(f"{alive} of {len(data['nodes'])} hosts alive")
