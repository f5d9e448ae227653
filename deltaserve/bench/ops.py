"""Op benchmark dispatcher: ``python -m deltaserve.bench.ops {all|NAME ...} [--json PATH] [--quick]``.

Every module ``deltaserve.bench.op_<name>`` is an op benchmark; adding one needs no change here.
Such a module defines ``run(quick: bool = False) -> list[dict]`` returning one row per shape with
keys op, shape, ours_ms, base_ms (or None), base (baseline name), speedup (base / ours), achieved,
floor_ms and note (see deltaserve.bench.common.print_table), and may define ``DESCRIPTION``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import traceback
from typing import Any

import deltaserve.bench as bench_pkg
from deltaserve.bench.common import device_record, print_table

PREFIX = "op_"


def discover() -> list[str]:
    """Names of the op benchmarks (module op_<name> in deltaserve.bench), sorted."""
    return sorted(
        m.name[len(PREFIX) :] for m in pkgutil.iter_modules(bench_pkg.__path__) if m.name.startswith(PREFIX)
    )


def run_ops(names: list[str], quick: bool = False) -> dict[str, Any]:
    """Runs each named benchmark; a failing one is recorded with its error and the rest still run."""
    result: dict[str, Any] = {"device": device_record(), "ops": {}}
    for name in names:
        try:
            mod = importlib.import_module(f"deltaserve.bench.{PREFIX}{name}")
            rows = mod.run(quick=quick)
            result["ops"][name] = {"rows": rows}
            print_table(rows, title=f"\n== {name} ({result['device'].get('device')}) ==")
        except Exception as exc:  # keep going: one broken op must not hide the others' numbers
            traceback.print_exc()
            result["ops"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ops", nargs="+", help=f"'all' or any of: {', '.join(available)}")
    parser.add_argument("--json", help="write results (rows + device record) to this path")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (smoke test)")
    args = parser.parse_args(argv)
    names = available if "all" in args.ops else args.ops
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown op(s) {unknown}; available: {available}")
    result = run_ops(names, quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if any("error" in v for v in result["ops"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
