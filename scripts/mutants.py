#!/usr/bin/env python3
"""Break each promise of RELIABILITY.md on purpose and check that its test fails.

Every `[[mutant]]` in mutants.toml is a one-line change that breaks one
promise: `find` (which must occur exactly once in `file`) becomes `replace`.
For each mutant this script applies the change, builds the test (a mutant that
does not compile proves nothing, so that is reported apart), runs it, and
restores the file whatever happens. A mutant is *caught* when its test fails.

    scripts/mutants.py [--list] [SUBSTRING ...]

With substrings, only mutants whose promise or test contains one of them run.
Writes target/mutants/report.md (one row per mutant) and exits 1 if any
mutant survived or did not compile. Needs the local stack (`just up`) and
demo.env's settings: run it as `just mutants`.
"""

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "mutants.toml"
REPORT = ROOT / "target" / "mutants" / "report.md"


def load():
    with open(LIST, "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    for i, m in enumerate(mutants):
        missing = {"promise", "file", "find", "replace", "test"} - m.keys()
        if missing:
            sys.exit(f"mutants.toml: mutant {i + 1} lacks {', '.join(sorted(missing))}")
    return mutants


def run(cmd, log):
    with open(log, "ab") as out:
        out.write(f"\n$ {cmd}\n".encode())
        out.flush()
        return subprocess.run(cmd, shell=True, cwd=ROOT, stdout=out, stderr=out).returncode


def first_failure(log, offset):
    """Where the test failed: its first panic's location and message, so a
    reader can tell a real catch from a test that broke for another reason."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if "panicked at" in line:
            where = line.split("panicked at", 1)[1].strip().rstrip(":")
            message = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{where} {message}"[:160]
    return "failed without a panic (see the log)"


def try_mutant(n, m, log):
    path = ROOT / m["file"]
    original = path.read_text()
    count = original.count(m["find"])
    if count != 1:
        return f"find text occurs {count} times", 0.0
    started = time.monotonic()
    path.write_text(original.replace(m["find"], m["replace"]))
    try:
        for step in m.get("before", []):
            if run(step, log) != 0:
                return "did not build", time.monotonic() - started
        test = f"cargo test --release --quiet {m['test']}"
        build = test.replace(" -- ", " --no-run -- ", 1) if " -- " in test else test + " --no-run"
        if run(build, log) != 0:
            return "did not compile", time.monotonic() - started
        mark = log.stat().st_size
        status = run(test, log)
        if status == 0:
            return "SURVIVED", time.monotonic() - started
        return f"caught: {first_failure(log, mark)}", time.monotonic() - started
    finally:
        path.write_text(original)
        for step in m.get("before", []):
            run(step, log)


def main():
    args = sys.argv[1:]
    mutants = load()
    if args and args[0] == "--list":
        for m in mutants:
            print(f"{m['promise']}\n    {m['file']}: {m['find']!r} -> {m['replace']!r}\n    cargo test --release {m['test']}")
        return
    if args:
        mutants = [m for m in mutants if any(a in m["promise"] or a in m["test"] for a in args)]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    log = REPORT.with_suffix(".log")
    log.write_text("")
    rows, bad = [], 0
    for n, m in enumerate(mutants, 1):
        result, seconds = try_mutant(n, m, log)
        bad += not result.startswith("caught")
        print(f"[{n}/{len(mutants)}] {seconds:5.0f} s  {m['promise']}\n    {result}", flush=True)
        one_line = lambda text: " ⏎ ".join(part.strip() for part in text.strip().splitlines())
        change = f"`{m['file']}`: `{one_line(m['find'])}` → `{one_line(m['replace'])}`"
        change = change.replace("|", "\\|")
        cell = result.replace("|", "\\|")
        rows.append(f"| {m['promise']} | {change} | `{m['test']}` | {cell} |")
        REPORT.write_text(
            "| promise | mutation | test | result |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
        )
    print(f"{len(mutants) - bad} of {len(mutants)} caught; report: {REPORT.relative_to(ROOT)}, log: {log.relative_to(ROOT)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
