"""The assimilator's file side: the batch output file and exports.

The database is the source of truth: a canonical result gets its place
(assim_seq) in the batch's output file inside the validating transaction, and
the file is appended only after that commit. So the file is always a prefix
of the database's sequence; on reopen, count_lines() says how much of it
landed and the rest is appended — each result appears exactly once.
"""

from __future__ import annotations

import csv
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterable

# (wu id, params JSON, result JSON, host name)
Row = tuple[int, str, str, str]


@lru_cache(maxsize=4096)
def _quoted(host: str) -> str:
    return json.dumps(host)


def jsonl_line(wu_id: int, params: str, result: str, host: str) -> str:
    # params/result are already compact JSON text from the store: splice, don't re-encode.
    return f'{{"wu":{wu_id},"params":{params},"result":{result},"host":{_quoted(host)}}}\n'


def count_lines(path: Path) -> int:
    """Complete lines in `path` (0 if absent), cutting off a partial last line a crash left."""
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                fh.truncate(end)
            return data.count(b"\n", 0, end)
    except FileNotFoundError:
        return 0


def append_rows(path: Path, rows: Iterable[Row]) -> int:
    lines = [jsonl_line(*row) for row in rows]
    if lines:
        with open(path, "a", encoding="ascii") as fh:
            fh.write("".join(lines))
    return len(lines)


def rewrite_rows(path: Path, rows: Iterable[Row]) -> int:
    """Replace the file atomically (used when it holds more than the database)."""
    tmp = path.with_name(path.name + ".tmp")
    lines = [jsonl_line(*row) for row in rows]
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(lines)


def _cell(value: object) -> object:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def write_export(rows: Iterable[Row], fmt: str, out: IO[str]) -> int:
    """Write canonical results as JSONL or CSV (params.* and result.* columns)."""
    if fmt == "jsonl":
        n = 0
        for row in rows:
            out.write(jsonl_line(*row))
            n += 1
        return n
    if fmt != "csv":
        raise ValueError(f"fmt: expected 'jsonl' or 'csv', got {fmt!r}")
    records = [(wu, json.loads(p), json.loads(r), host) for wu, p, r, host in rows]
    pkeys = sorted({k for _, p, _, _ in records for k in p})
    rkeys = sorted({k for _, _, r, _ in records if isinstance(r, dict) for k in r})
    writer = csv.writer(out)
    writer.writerow(["wu", "host", *(f"params.{k}" for k in pkeys), *(f"result.{k}" for k in rkeys)])
    for wu, p, r, host in records:
        r = r if isinstance(r, dict) else {}
        writer.writerow([wu, host, *(_cell(p.get(k, "")) for k in pkeys), *(_cell(r.get(k, "")) for k in rkeys)])
    return len(records)

