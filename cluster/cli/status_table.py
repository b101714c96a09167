"""The `cluster status` table."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.head.boincreport import summary

STATE_STYLE = {"alive": "green", "lost": "red", "left": "dim"}


def _gpu_line(g: dict, node: dict) -> str:
    """A GPU: what it is, how hot, and why it takes no work if it does not."""
    line = f"{g['index']}: {escape(g['name'])}, {g['vram_bytes'] / 2**30:.0f} GiB, cc {g['compute_capability']}"
    if g.get("temperature_c") is not None:
        line += f", {g['temperature_c']:.0f} °C"
    index = str(g["index"])
    paused = (node.get("paused") or {}).get("gpus", {}).get(index)
    sick = (node.get("health") or {}).get("gpus", {}).get(index)
    admin = ((node.get("admin") or {}).get("gpus") or {}).get(index) or {}
    if g.get("lost"):
        line += " [red](lost)[/]"
    elif sick:
        line += f" [red](unhealthy: {escape(sick)})[/]"
    elif admin.get("state"):
        line += f" [yellow]({admin['state']}: {escape(admin.get('reason') or 'no reason given')})[/]"
    elif paused:
        line += f" [yellow](paused: {paused})[/]"
    return line


def render_status(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"salvage cluster — head {data['head']}")
    for col in ("host", "state", "GPUs (model, VRAM, compute)", "speed GFLOP/s", "running", "BOINC", "last event"):
        table.add_column(col)
    for node in data["nodes"]:
        gpus = "\n".join(_gpu_line(g, node) for g in node["gpus"]) or f"CPU only ({node['cpu']['cores']} cores)"
        style = STATE_STYLE.get(node["state"], "")
        state = f"[{style}]{node['state']}[/]"
        if node.get("blocked"):
            state += f"\n[yellow]{escape(node['blocked'])}[/]"
        event = node.get("last_event") or {}
        table.add_row(escape(node["name"]), state, gpus, f"{node['speed_gflops']:.1f}",
                      escape(", ".join(node["running"])) or "-", escape(summary(node.get("boinc"))),
                      escape(f"{event['kind']}: {event['detail']}") if event else "-")
    console.print(table)
    alive = sum(n["state"] == "alive" for n in data["nodes"])
    paused = sum(bool(n.get("blocked")) for n in data["nodes"] if n["state"] == "alive")
    console.print(f"{alive} of {len(data['nodes'])} hosts alive" + (f", {paused} taking no work" if paused else ""))
