"""`salvage boinc ...`: the PCs' own BOINC clients, fleet-wide."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .common import call, get, head_options, state_dir_option


@click.group()
def boinc():
    """The BOINC clients on the PCs (agents joined with `--boinc`).

    Each such PC lends BOINC every device salvage leaves idle and takes a
    device back within seconds when salvage's work arrives.

    \b
    salvage boinc status                       a row per PC: projects, tasks, credit, what salvage holds
    salvage boinc attach URL --account-key-file KEYFILE [--hosts pc1,pc2]
    """


@boinc.command()
@head_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with key `hosts`.")
def status(head, as_json):
    """Every alive PC's BOINC client: projects, tasks running, credit, and what salvage holds."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    data = get(head, "/api/boinc/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title="BOINC on the PCs")
    for col in ("host", "client", "projects", "tasks running", "credit", "salvage"):
        table.add_column(col)
    managed = 0
    for row in data["hosts"]:
        report = row["boinc"]
        if report is None:
            table.add_row(escape(row["host"]), "[dim]not managed[/]", "-", "-", "-", "-")
            continue
        managed += 1
        client = "connected" if report["connected"] else f"[red]{escape(report['note'] or 'not reachable')}[/]"
        projects = ", ".join(p["name"] or p["url"] for p in report["projects"]) or "none"
        credit = sum(p["credit"] for p in report["projects"])
        held = report["held"]
        salvage = "; ".join(f"{r.upper()} held: {h['detail'] or h['reason']}" for r, h in sorted(held.items())) \
            or "lends every device"
        table.add_row(escape(row["host"]), client, escape(projects), str(report["tasks"].get("running", 0)),
                      f"{credit:,.0f}", escape(salvage))
    Console().print(table)
    click.echo(f"{managed} of {len(data['hosts'])} alive PCs manage a BOINC client"
               + ("" if managed else " (join a PC with `salvage worker join ... --boinc`)"))


@boinc.command()
@state_dir_option
@click.argument("url")
@click.option("--account-key-file", type=click.Path(path_type=Path), required=True,
              help="A file holding your account key for the project (from its web site's account page); "
                   "it goes to the PCs and is not stored on the head.")
@click.option("--hosts", default=None, metavar="PC1,PC2",
              help="Only these PCs [default: every alive PC whose agent manages BOINC].")
@click.option("--wait", "wait_s", type=float, default=90.0, show_default=True,
              help="Seconds to wait for the PCs to report how the attach went.")
def attach(state_dir, url, account_key_file, hosts, wait_s):
    """Ask the PCs' BOINC clients to attach to the project at URL.

    Each client does the project's own attach; each PC's outcome comes back in
    one line. Exits non-zero if any PC failed or did not answer in time.
    """
    try:
        lines = account_key_file.expanduser().read_text().splitlines()
    except OSError as err:
        raise click.ClickException(f"account-key-file: cannot read {account_key_file} ({err.strerror})") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise click.ClickException(f"account-key-file: {account_key_file} is empty")
    names = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    reply = call(state_dir, "/api/boinc/attach", {"url": url, "key": key, "hosts": names})
    for host, why in reply["skipped"].items():
        click.echo(f"{host}: skipped ({why})")
    rid, left = reply["id"], list(reply["sent"])
    click.echo(f"asked {', '.join(left)} to attach {url}; waiting for their clients (up to {wait_s:.0f} s)")
    failed = False
    deadline = time.monotonic() + wait_s
    while left:
        rows = {r["host"]: r for r in get(state_dir, "/api/boinc/status")["hosts"]}
        for host in list(left):
            verdict = _verdict(rows.get(host), rid)
            if verdict is not None:
                text, ok = verdict
                click.echo(f"{host}: {text}")
                failed |= not ok
                left.remove(host)
        if left and time.monotonic() > deadline:
            click.echo(f"{', '.join(left)}: no answer within {wait_s:.0f} s (see `salvage boinc status` later)")
            failed = True
            break
        if left:
            time.sleep(1.0)
    sys.exit(1 if failed else 0)



def _verdict(row: dict | None, rid: str) -> tuple[str, bool] | None:
    """A PC's answer to attach request `rid` (text, attached?), or None while it has none yet."""
    if row is None:
        return "left the cluster before it answered", False
    outcome = (row["boinc"] or {}).get("attaches", {}).get(rid)
    if outcome is None:
        if rid in row["waiting"]:
            return None
        return "the head no longer holds the request (did it restart?); ask again", False
    if outcome["state"] == "attaching":
        return None
    return outcome["state"] + (f": {outcome['detail']}" if outcome["detail"] else ""), outcome["state"] == "attached"
