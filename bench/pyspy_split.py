"""Where a replay's time goes: py-spy samples (``--format raw``) put in one category each.

Each sample's stack decides its category, first match wins: a ledger frame (the ledger
adapter or SQLAlchemy) under ``write_outputs`` or the read-backs is "reading back for the
outputs", elsewhere "ledger"; then "outputs", "parse" (``read_events``), "core and steps"
(under ``BatchProcessor.process`` with no ledger frame) and "imports and the rest". Also
prints the functions that own the most samples in one category.

    py-spy record -r 200 --format raw -o replay.raw -- python bench/bench_replay.py --stream S
    python bench/pyspy_split.py replay.raw [--rate 200] [--top "core and steps"]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

READ_BACK = ("write_outputs", "lead_facts_frame", "decisions_between")
CATEGORIES = (
    "ledger",
    "core and steps",
    "parse",
    "outputs",
    "reading back for the outputs",
    "imports and the rest",
)


def category(stack: str) -> str:
    if "adapters/ledger" in stack or "sqlalchemy" in stack:
        return "reading back for the outputs" if any(f in stack for f in READ_BACK) else "ledger"
    if "write_outputs" in stack:
        return "outputs"
    if "read_events" in stack:
        return "parse"
    if "BatchProcessor.process" in stack:
        return "core and steps"
    return "imports and the rest"


def split(path: Path) -> tuple[Counter[str], dict[str, Counter[str]]]:
    shares: Counter[str] = Counter()
    owners: dict[str, Counter[str]] = {name: Counter() for name in CATEGORIES}
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        name = category(stack)
        shares[name] += int(count)
        owners[name][stack.rsplit(";", 1)[-1]] += int(count)
    return shares, owners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy --format raw output")
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy's -r (samples/s)")
    parser.add_argument("--top", choices=CATEGORIES, default="core and steps")
    args = parser.parse_args()
    shares, owners = split(args.raw)
    total = sum(shares.values())
    print("| share | seconds | where |\n| --- | --- | --- |")
    for name, samples in shares.most_common():
        print(f"| {100 * samples / total:.1f} % | {samples / args.rate:.1f} s | {name} |")
    print(f"\nlargest own time in {args.top!r}:")
    for frame, samples in owners[args.top].most_common(10):
        print(f"  {samples / args.rate:6.2f} s  {frame}")


if __name__ == "__main__":
    main()
