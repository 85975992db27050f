#!/usr/bin/env python3
"""Summarise a kosoku (Autobahn|Testsuite) report and fail on any failed case.

    autobahn_check.py REPORT_DIR [--expect N] [--fail MSG ...]
    autobahn_check.py --count-cases '1.*,2.*'     # print how many cases match

REPORT_DIR is what `kosoku -o REPORT_DIR` wrote. Its index.json is
Autobahn's format:

    {AGENT: {CASE_ID: {"behavior": ..., "behaviorClose": ...,
                       "remoteCloseCode": ..., "duration": ms,
                       "reportfile": "<agent>_case_1_1_1.json"}}}

AGENT is the server's `Server` header, or "host:port" when it sends none.
Each per-case JSON file (reportfile) has the details ("result",
"resultClose", "description", "wirelog", ...).

A case passes when both its behavior and its behaviorClose are one of OK,
NON-STRICT, INFORMATIONAL (kosoku's own `CaseResult.passed` rule).
Anything else fails: FAILED, UNIMPLEMENTED, ERROR (could not run, e.g.
connection refused), and close verdicts WRONG CODE, UNCLEAN,
FAILED BY CLIENT, FAILED. Cases missing against --expect count as failed.

The last line printed is always `autobahn: N passed, M failed`.
Exit status: 0 if every case passed and at least N ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ACCEPTABLE = {"OK", "NON-STRICT", "INFORMATIONAL"}


def _pattern_matches(case_id: str, pattern: str) -> bool:
    """kosoku's selection rule for -i/-x (checked against kosoku 0.1.0):
    an id without `*` must match exactly; with `*`, the glob (`*` -> `.*`)
    must match at the start of the id (like re.match, no end anchor)."""
    if "*" not in pattern:
        return case_id == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.match(regex, case_id) is not None


def count_cases(patterns: str) -> int:
    from kosoku.cases import CASES  # the venv's kosoku

    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return sum(1 for c in CASES if any(_pattern_matches(c, p) for p in pats))


def _sort_key(case_id: str) -> list[int]:
    try:
        return [int(p) for p in case_id.split(".")]
    except ValueError:
        return [1 << 30]


def _detail(report_dir: Path, entry: dict) -> str:
    """A one-line reason from the per-case report file, when it is there."""
    path = report_dir / str(entry.get("reportfile", ""))
    try:
        case = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    parts = []
    for key in ("result", "resultClose"):
        text = case.get(key)
        if text and text not in parts:
            parts.append(str(text))
    if case.get("remoteCloseCode") is not None:
        reason = case.get("remoteCloseReason") or ""
        parts.append(f"remote close {case['remoteCloseCode']} {reason!r}")
    return " | ".join(parts)[:300]


def check(report_dir: Path, expect: int, extra_failures: list[str]) -> int:
    passed = failed = 0
    problems: list[str] = []
    index_path = report_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        print(f"autobahn: cannot read {index_path}: {e}")
        index = {}

    behaviors: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    failures: list[tuple[list[int], str]] = []
    agents = sorted(index)
    for agent in agents:
        for case_id, entry in index[agent].items():
            b = str(entry.get("behavior"))
            bc = str(entry.get("behaviorClose"))
            behaviors[b] += 1
            closes[bc] += 1
            if b in ACCEPTABLE and bc in ACCEPTABLE:
                passed += 1
                continue
            failed += 1
            who = f"[{agent}] " if len(agents) > 1 else ""
            detail = _detail(report_dir, entry)
            line = f"  {who}{case_id}: behavior={b} behaviorClose={bc}"
            if detail:
                line += f" -- {detail}"
            failures.append((_sort_key(case_id), line))

    total = passed + failed
    print(f"autobahn report: {report_dir} (agent: {', '.join(agents) or 'none'})")
    for name, counts in (("behavior", behaviors), ("behaviorClose", closes)):
        for verdict, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {name} {verdict}: {n}")

    if failures:
        print(f"failed cases ({len(failures)}):")
        for _, line in sorted(failures):
            print(line)

    missing = max(0, expect - total)
    if missing:
        problems.append(f"only {total} cases ran, expected {expect} ({missing} missing)")
    problems.extend(extra_failures)
    for p in problems:
        print(f"FAIL: {p}")

    failed_total = failed + missing
    print(f"autobahn: {passed} passed, {failed_total} failed")
    return 1 if (failed_total or problems or total == 0) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", nargs="?", type=Path)
    ap.add_argument("--expect", type=int, default=0, help="minimum number of cases")
    ap.add_argument(
        "--fail",
        metavar="MSG",
        action="append",
        default=[],
        help="fail the run for this reason (e.g. the server died); repeatable",
    )
    ap.add_argument(
        "--count-cases",
        metavar="PATTERNS",
        help="print how many kosoku cases match comma-separated ids/globs, and exit",
    )
    args = ap.parse_args()
    if args.count_cases is not None:
        print(count_cases(args.count_cases))
        return 0
    if args.report_dir is None:
        ap.error("REPORT_DIR is required")
    return check(args.report_dir, args.expect, args.fail)


if __name__ == "__main__":
    sys.exit(main())
