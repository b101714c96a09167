"""`salvage train ...`: submit, watch, stop and sample training jobs."""
from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

import click

from cluster.train.options import PoolOptionError, PoolOptions
from jobs.gpt.config import ConfigError, load_config

from .common import call, head_options, state_dir_option, state_of
from .common import submit as submit_call


def parse_set(pairs: tuple[str, ...]) -> dict:
    """`--set max_iters=50` → {"max_iters": 50}; values are read as TOML, else text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.ClickException(f"set: expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def pool_options(workers: str, sync_steps: str, codec: str, pool_sets: tuple[str, ...]) -> dict | None:
    """The pool part of a submission, or None for a single-worker job."""
    if workers == "all":
        count = 0
    else:
        try:
            count = int(workers)
        except ValueError:
            raise click.ClickException(f"workers: expected a count or 'all', got {workers!r}") from None
        if count < 1:
            raise click.ClickException(f"workers: expected at least 1, got {count}")
    if sync_steps == "auto":
        steps = 0
    else:
        try:
            steps = int(sync_steps)
        except ValueError:
            steps = -1
        if steps < 1:
            raise click.ClickException(f"sync-steps: expected a positive number of steps or 'auto', got {sync_steps!r}")
    if count == 1 and not pool_sets and steps == 0 and codec == "fp16":
        return None
    options = {"workers": count, "sync_steps": steps, "codec": codec, **parse_set(pool_sets)}
    try:
        PoolOptions.from_dict(options)
    except PoolOptionError as err:
        raise click.ClickException(str(err)) from None
    return options


@click.group()
def train():
    """Train small GPT models on the cluster."""


@train.command()
@state_dir_option
@click.option("--preset", default="shakespeare-char-cpu", show_default=True,
              help="shakespeare-char-cpu (small, CPU-friendly) or shakespeare-char (GPU).")
@click.option("--data", default=None,
              help="'shakespeare' (downloaded, checksum verified), a text file, or a folder of .txt files "
                   "[default: Tiny Shakespeare, or Python's own docs text with no network].")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A TOML file overriding any field of the preset.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one field, e.g. --set max_iters=500 (repeatable).")
@click.option("--workers", default="1", show_default=True, metavar="N|all",
              help="Train across N devices at once (or all that fit), in rounds of local steps "
                   "with a compressed average between them (DiLoCo).")
@click.option("--sync-steps", default="auto", show_default=True, metavar="N|auto",
              help="Pool jobs: a round lasts as long as N local steps take on the fastest worker "
                   "(the others train for the same time); auto keeps communication under 10%% of each "
                   "round on the measured links.")
@click.option("--codec", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp16", show_default=True,
              help="Pool jobs: how deltas and parameter changes travel (int8/int4: per-block scales, "
                   "rounding carried into the next round).")
@click.option("--pool-set", "pool_sets", multiple=True, metavar="KEY=VALUE",
              help="Pool jobs: set outer_lr, outer_momentum, sync_growth, max_sync_steps, token_factor, "
                   "checkpoint_rounds, allow_cpu, keep_history or hosts (repeatable).")
def submit(state_dir, preset, data, config_file, sets, workers, sync_steps, codec, pool_sets):
    """Submit a training job; its id is the last line printed.

    \b
    One device:   salvage train submit --preset shakespeare-char-cpu
    Whole pool:   salvage train submit --workers all --sync-steps auto
    """
    from jobs.gpt.data import DataError, load_corpus, min_corpus_tokens
    from jobs.gpt.tokenizer import build_tokenizer

    try:
        cfg = load_config(preset, config_file, parse_set(sets))
        if data not in (None, "shakespeare"):
            data = str(Path(data).expanduser().resolve())  # the worker runs elsewhere
            corpus = load_corpus(data, Path("/nonexistent-cache"))
            n = len(build_tokenizer(cfg.train.tokenizer, corpus.text).encode(corpus.text))
            if n < min_corpus_tokens(cfg.model.block_size):
                raise DataError(f"data: corpus {data} is {n} tokens long; block_size {cfg.model.block_size} "
                                f"needs at least {min_corpus_tokens(cfg.model.block_size)}")
    except (ConfigError, DataError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0]) from None
    body = {"preset": preset, "config": cfg.to_dict(), "data": data}
    pool = pool_options(workers, sync_steps, codec, pool_sets)
    if pool is not None:
        body["pool"] = pool
    reply = submit_call(state_dir, "/api/train/submit", body)
    click.echo(f"submitted training job (preset {preset}); follow it with `salvage train logs {reply['job']} -f`")
    click.echo(reply["job"])


@train.command(name="list")
@head_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_jobs(head, as_json):
    """Training jobs, newest last."""
    jobs = call(head, "/api/train/list", {})["jobs"]
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training jobs")
    for col in ("id", "state", "preset", "host", "iter", "train loss", "val loss", "tokens/s"):
        table.add_column(col)
    for j in jobs:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        table.add_row(str(j["id"]), j["state"] + (f" ({j['error']})" if j["error"] else ""), j["preset"],
                      (f"pool of {j['workers'] or 0}" if j.get("pool") else j["host"]) or "-",
                      f"{j['iter'] or 0}/{j['max_iters']}", fmt(j["train_loss"], ".4f"),
                      fmt(j["val_loss"], ".4f"), fmt(j["tokens_per_s"], ".0f"))
    Console().print(table)


def _line(entry: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
    d = entry["data"]
    if entry["kind"] == "log":
        return f"{stamp} {d}"
    if "round" in d:
        return _round_lines(stamp, d)
    parts = [f"iter {d.get('iter')}/{d.get('max_iters')}", f"loss {d.get('train_loss', float('nan')):.4f}"]
    if d.get("val_loss") is not None and "val_loss" in d:
        parts.append(f"val {d['val_loss']:.4f}")
    if d.get("tokens_per_s"):
        parts.append(f"{d['tokens_per_s']:.0f} tok/s")
    if d.get("eta_s") is not None:
        parts.append(f"ETA {d['eta_s']:.0f} s")
    return f"{stamp} " + ", ".join(parts)


def _round_lines(stamp: str, d: dict) -> str:
    """A pool round: the pool's figures, then one line per worker."""
    if "train_loss" not in d:  # an evaluation
        return f"{stamp} round {d['round']} (iter {d.get('iter')}/{d.get('max_iters')}): val {d['val_loss']:.4f}"
    head = (f"{stamp} round {d['round']}: iter {d.get('iter')}/{d.get('max_iters')}, loss {d['train_loss']:.4f}, "
            f"{d.get('tokens_per_s') or 0:.0f} tok/s, round {d.get('round_s', 0):.1f} s, "
            f"moved {(d.get('bytes_up', 0) + d.get('bytes_down', 0)) / 2**20:.1f} MiB")
    if d.get("eta_s") is not None:
        head += f", ETA {d['eta_s']:.0f} s"
    rows = [f"    {w['worker']:<24} {w['steps']:>5} steps {w['tokens_per_s']:>7} tok/s  waited {w['wait_s']:.2f} s"
            for w in d.get("workers", [])]
    return "\n".join([head, *rows])


@train.command()
@head_options
@click.argument("job", type=int)
@click.option("-f", "--follow", is_flag=True,
              help="Keep showing progress (with a live bar) until the job ends; then exit 0 if it is done, "
                   "1 if it failed or was stopped.")
def logs(head, job, follow):
    """A job's log: iteration, train/val loss, tokens/s, ETA."""
    reply = call(head, "/api/train/logs", {"job": job})
    for e in reply["entries"]:
        click.echo(_line(e))
    last = reply["entries"][-1]["seq"] if reply["entries"] else 0
    if not follow:
        if reply["state"] in ("queued",):
            click.echo("state: queued (waiting for a PC whose device fits the model)")
        return
    if reply["state"] not in FINAL_STATES:
        reply = _follow(head, job, reply, last)
    click.echo(f"job {job} {reply['state']}" + (f": {reply['error']}" if reply.get("error") else ""))
    if reply["state"] != "done":  # a script waiting on the job learns how it ended
        sys.exit(1)


FINAL_STATES = ("done", "failed", "stopped")


def _follow(head, job: int, reply: dict, last: int) -> dict:
    """Show the job's new entries with a live bar until it ends; its last reply."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("job {task.fields[job]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=reply["max_iters"], job=job, info="")
        while True:
            reply = call(head, "/api/train/logs", {"job": job, "since": last})
            for e in reply["entries"]:
                last = e["seq"]
                bar.console.print(_line(e))
                if e["kind"] == "progress":
                    d = e["data"]
                    bar.update(task, completed=d.get("iter", 0),
                               info=f"loss {d.get('train_loss', 0):.3f}  {d.get('tokens_per_s') or 0:.0f} tok/s")
            if reply["state"] in FINAL_STATES:
                return reply
            time.sleep(1.0)


@train.command()
@state_dir_option
@click.argument("job", type=int)
def stop(state_dir, job):
    """Stop a job; it checkpoints first, so nothing learned is lost."""
    reply = call(state_dir, "/api/train/stop", {"job": job})
    click.echo(f"job {job}: {reply['state']}")


@train.command()
@state_dir_option
@click.argument("job", type=int)
@click.option("--prompt", default="\n", help="Text to continue.")
@click.option("--tokens", type=int, default=300, show_default=True, help="How many tokens to generate.")
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--top-k", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=None)
def sample(state_dir, job, prompt, tokens, temperature, top_k, seed):
    """Generate text from a job's latest checkpoint (while it runs, or after)."""
    from jobs.gpt.sample import sample as generate

    call(state_dir, "/api/train/logs", {"job": job, "since": 2**62})  # the job exists
    ckpt = state_of(state_dir).path / "jobs" / f"train-{job}" / "ckpt.pt"
    if not ckpt.exists():
        raise click.ClickException(f"job: training job {job} has no checkpoint yet (one is written at every eval)")
    try:
        click.echo(generate(ckpt, prompt, tokens, temperature, top_k, seed))
    except ValueError as err:
        raise click.ClickException(str(err).splitlines()[0]) from None
