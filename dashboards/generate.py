"""Write the dashboards' JSON, or check that the committed JSON is current.

    python -m dashboards.generate            # write dashboards/json/*.json
    python -m dashboards.generate --check    # exit 1 if any file is stale
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards import fleet, gpu_health, science, training

JSON_DIR = Path(__file__).resolve().parent / "json"

# File stem -> builder. Grafana's provisioning loads every file in JSON_DIR.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "fleet": fleet.build,
    "gpu_health": gpu_health.build,
    "training": training.build,
    "science": science.build,
}


def render() -> dict[str, str]:
    """File name -> the JSON text the code generates now."""
    return {
        f"{stem}.json": json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for stem, build in DASHBOARDS.items()
    }


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Files in `directory` that are missing, differ from the code, or are
    left over from a dashboard that no longer exists."""
    expected = render()
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
    ]
    stale += sorted(path.name for path in directory.glob("*.json") if path.name not in expected)
    return stale


def write(directory: Path = JSON_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = render()
    for name, text in expected.items():
        (directory / name).write_text(text, encoding="utf-8")
    for path in directory.glob("*.json"):
        if path.name not in expected:
            path.unlink()
    return sorted(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON on disk differs from the code")
    parser.add_argument("--out", type=Path, default=JSON_DIR, help=f"directory of the JSON files (default {JSON_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(
                f"{args.out}: stale dashboard JSON: {', '.join(stale)}; run python -m dashboards.generate",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out}: {len(DASHBOARDS)} dashboards up to date")
        return 0
    for name in write(args.out):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
