"""`make bench`: every benchmark against its same-run baseline, one table, latest.json.

`make bench BENCH="http queue"` runs only those groups. Each group is a module
`bench/b_<group>.py` with `run(ctx) -> list[Row]`; a group that fails is reported as a
failed row, and the others still run.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import Context, Row, rebuild_schema, say, table, write_results
from config import load_settings

GROUPS = ("http", "queue", "export", "analytics")


def main(argv: list[str]) -> int:
    chosen = argv or list(GROUPS)
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        raise SystemExit(f"unknown benchmark group(s) {sorted(unknown)}; choose from {GROUPS}")
    base = load_settings()  # DATABASE_URL / REDIS_URL from scripts/devservices.py
    rebuild_schema(base.database_url)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="maycole-bench-") as tmp:
        ctx = Context(base=base, work=Path(tmp))
        for group in chosen:
            say(f"== {group}")
            try:
                module = importlib.import_module(f"bench.b_{group}")
                rows.extend(module.run(ctx))
            except Exception as exc:  # noqa: BLE001 - report it, run the other groups
                traceback.print_exc()
                rows.append(Row(group, f"{group} benchmarks crashed", 0, "", met=False,
                                notes=f"{type(exc).__name__}: {exc}"))  # fmt: skip
    seconds = time.perf_counter() - started
    print(table(rows), flush=True)
    print(f"\n{len(rows)} rows in {seconds:.0f} s; written to bench/results/latest.json")
    write_results(rows, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
