"""`salvage science ...`: batches of BOINC-style work units on the cluster."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .common import call, head_options, state_dir_option
from .common import submit as submit_call

# Short names people use on the command line, for the apps' parameters.
GRID_ALIASES = {"T": "temperature", "rho": "density", "N": "n_particles"}


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(grid: str) -> list[dict]:
    """`"T=0.85,0.9 rho=0.1,0.5"` → the 4 combinations, as parameter dicts."""
    axes = []
    for part in grid.split():
        key, sep, values = part.partition("=")
        if not sep or not key or not values:
            raise click.ClickException(f"grid: expected NAME=V1,V2,... separated by spaces, got {part!r}")
        axes.append([(GRID_ALIASES.get(key, key), _value(v)) for v in values.split(",") if v])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else []


@click.group()
def science():
    """Run BOINC-style science work units on the pool."""


@science.command()
def apps():
    """What can run, and what it needs."""
    from jobs.science.apps import APPS

    table = Table(title="science apps")
    for col in ("app", "version", "needs", "self-verifying", "parameters"):
        table.add_column(col)
    for app in APPS.values():
        n = app.needs
        needs = "GPU" if n.gpu else ("CPU or GPU" if n.gpu_capable else "CPU")
        if n.min_vram_bytes:
            needs += f", ≥{n.min_vram_bytes / 2**20:.0f} MiB VRAM"
        if n.min_compute_capability:
            needs += f", cc ≥{n.min_compute_capability}"
        params = "\n".join(f"{k}: {v}" for k, v in app.params_schema().items())
        table.add_row(app.name, str(app.version), needs, "yes" if app.self_verifying else "no", params)
    Console().print(table)


@science.command()
@state_dir_option
@click.argument("app")
@click.option("--grid", default=None, help='Parameter grid, e.g. "T=0.85,0.9 rho=0.1,0.5,0.776".')
@click.option("--sequence", default=None, help="hp-fold: the H/P sequence to fold.")
@click.option("--seeds", type=int, default=None, help="One work unit per seed 0..N-1 (for each grid point).")
@click.option("--params", "params_json", default=None, help="Extra parameters for every work unit, as JSON.")
@click.option("--quorum", type=int, default=None, help="Agreeing results needed (min_quorum).")
@click.option("--replicas", type=int, default=None, help="Copies sent at first (target_nresults).")
@click.option("--deadline", type=float, default=None, help="Seconds a host has to return a copy (delay_bound).")
def submit(state_dir, app, grid, sequence, seeds, params_json, quorum, replicas, deadline):
    """Submit a batch of work units; its id is the last line printed."""
    from jobs.science.apps import get_app

    try:
        get_app(app)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    base = {}
    if params_json:
        try:
            base = json.loads(params_json)
        except ValueError:
            raise click.ClickException("params: expected a JSON object") from None
        if not isinstance(base, dict):
            raise click.ClickException("params: expected a JSON object")
    if sequence:
        base["sequence"] = sequence
    points = parse_grid(grid) if grid else [{}]
    if seeds is not None:
        if seeds < 1:
            raise click.ClickException(f"seeds: expected at least 1, got {seeds}")
        points = [{**p, "seed": s} for p in points for s in range(seeds)]
    params = [{**base, **p} for p in points]
    policy = {"min_quorum": quorum, "target_nresults": replicas if replicas else quorum, "delay_bound": deadline}
    reply = submit_call(state_dir, "/api/science/submit", {"app": app, "params": params, "policy": policy})
    click.echo(f"submitted {len(params)} work unit(s) of {app}; watch with `salvage science status {reply['batch']}`")
    click.echo(reply["batch"])


@science.command()
@head_options
@click.argument("batch", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(head, batch, as_json):
    """Work units by state, credit by host, ETA, and why units wait; `done` once
    every unit is final."""
    reply = call(head, "/api/science/status", {"batch": batch})
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    console = Console()
    if batch is None:
        table = Table(title="science batches")
        for col in ("batch", "app", "work units", "done", "error", "state", "waiting"):
            table.add_column(col)
        for b in reply["batches"]:
            table.add_row(str(b["batch"]), b["app"], str(b["wus"]), str(b["done_wus"]), str(b["error_wus"]),
                          "done" if b["done"] else "running", Text("\n".join(b.get("waiting") or ())))
        console.print(table)
        credit = reply["credit_by_host"]
    else:
        w, r = reply["wus"], reply["results"]
        console.print(f"batch {batch} ({reply['app']} v{reply['version']}): "
                      f"{'done' if reply['done'] else 'running'}")
        console.print(f"work units: {w['done']} done, {w['error']} error, {w['in_progress']} in progress, "
                      f"{w['unsent']} unsent (of {w['total']})"
                      + (f"; errors: {reply['wu_errors']}" if reply["wu_errors"] else ""))
        console.print(f"results: {r['valid']} valid, {r['invalid']} invalid, {r['success']} returned, "
                      f"{r['client_error']} errors, {r['no_reply']} no reply, {r['in_progress']} out")
        if reply["eta_seconds"] and not reply["done"]:
            console.print(f"ETA {reply['eta_seconds']:.0f} s")
        for line in reply.get("waiting") or ():
            console.print(f"waiting: {line}", markup=False)
        credit = reply["credit_by_host"]
    if credit:
        table = Table(title="credit (cobblestones)")
        table.add_column("host")
        table.add_column("credit", justify="right")
        for host, c in sorted(credit.items(), key=lambda kv: -kv[1]):
            table.add_row(host, f"{c:.4g}")
        console.print(table)


@science.command()
@state_dir_option
@click.argument("batch", type=int)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write here, not stdout.")
def results(state_dir, batch, fmt, output):
    """Export the canonical result of every finished work unit."""
    reply = call(state_dir, "/api/science/export", {"batch": batch, "format": fmt})
    if output:
        output.write_text(reply["text"])
    else:
        sys.stdout.write(reply["text"])
    if not reply["done"]:
        click.echo(f"note: batch {batch} is still running; these are the results so far", err=True)


@science.command(name="try")
@click.argument("app")
@click.option("--params", "params_json", default="{}", show_default=True, help="The work unit's parameters, JSON.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
def try_app(app, params_json, device):
    """Run one work unit here, without a cluster; print its result as JSON."""
    from jobs.science.apps import get_app

    try:
        the_app = get_app(app)
        params = json.loads(params_json)
        if not isinstance(params, dict):
            raise ValueError("params: expected a JSON object")
        params = the_app.validate_params(params)
        result = the_app.run(params, device=device)
    except json.JSONDecodeError:
        raise click.ClickException("params: expected a JSON object") from None
    except ValueError as err:
        raise click.ClickException(str(err).splitlines()[0]) from None
    click.echo(json.dumps(result))


@science.command()
@state_dir_option
@click.argument("batch", type=int)
def cancel(state_dir, batch):
    """Cancel a batch: unsent units are withdrawn, running ones are told to stop,
    results already validated are kept and credited."""
    reply = call(state_dir, "/api/science/cancel", {"batch": batch})
    click.echo(f"batch {batch} cancelled: {reply['withdrawn']} units withdrawn, {reply['aborted']} copies stopped; "
               "validated results are kept")
