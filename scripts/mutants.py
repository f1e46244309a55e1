#!/usr/bin/env python3
"""Break each promise of RELIABILITY.md on purpose and check that its test fails.

Every `[[mutant]]` in mutants.toml is a small change that breaks one promise:
`find` (which must occur exactly once in `file`) becomes `replace`. For each
mutant this script applies the change, builds the test (a mutant that does
not compile proves nothing, so that is reported apart), runs it, and
restores the file whatever happens (an error, Ctrl-C, SIGTERM or SIGHUP). A
mutant is *caught* when its test fails; the report says where, so a reader
can tell a real catch from a test that broke for another reason.

First, every test named is run once unmutated: a test that fails without a
mutant would "catch" every mutant, so the run stops there.

    scripts/mutants.py [--no-baseline] [--list] [SUBSTRING ...]

With substrings, only mutants whose promise or test contains one of them run.
Writes target/mutants/report.md (one row per mutant, as it goes) and exits 1
if any mutant survived or did not compile. Needs the local stack (`just up`)
and demo.env's settings: run it as `just mutants`.
"""

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "mutants.toml"
REPORT = ROOT / "target" / "mutants" / "report.md"
LOG = REPORT.with_suffix(".log")
# A test that hangs under a mutant has failed too; one that hangs this long
# is stopped (with every process it started).
TEST_TIMEOUT_SECONDS = 30 * 60


def load():
    with open(LIST, "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    for i, m in enumerate(mutants):
        missing = {"promise", "file", "find", "replace", "test"} - m.keys()
        if missing:
            sys.exit(f"mutants.toml: mutant {i + 1} lacks {', '.join(sorted(missing))}")
    return mutants


def run(cmd):
    """Runs `cmd` in its own process group, appending its output to the log;
    its exit status, or None if it timed out."""
    with open(LOG, "ab") as out:
        out.write(f"\n$ {cmd}\n".encode())
        out.flush()
        child = subprocess.Popen(
            cmd, shell=True, cwd=ROOT, stdout=out, stderr=out, start_new_session=True
        )
        try:
            return child.wait(timeout=TEST_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def test_command(m, build_only=False):
    return f"cargo test --release --quiet {m['test']}" + (" --no-run" if build_only else "")


def first_failure(offset):
    """Where the test failed: its first panic's location and message."""
    with open(LOG, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if "test did not panic as expected at" in line:  # a #[should_panic] test
            return line.split(" at ", 1)[1].strip() + " the test did not panic as expected"
        if "panicked at" in line:
            where = line.split("panicked at", 1)[1].strip().rstrip(":")
            message = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{where} {message}"[:160]
    return "failed without a panic (see the log)"


def try_mutant(m):
    path = ROOT / m["file"]
    original = path.read_bytes()
    find, replace = m["find"].encode(), m["replace"].encode()
    count = original.count(find)
    if count != 1:
        return f"find text occurs {count} times"
    path.write_bytes(original.replace(find, replace))
    try:
        for step in m.get("before", []):
            if run(step) != 0:
                return "did not build"
        if run(test_command(m, build_only=True)) != 0:
            return "did not compile"
        mark = LOG.stat().st_size
        status = run(test_command(m))
        if status == 0:
            return "SURVIVED"
        if status is None:
            return f"caught: the test hung (stopped after {TEST_TIMEOUT_SECONDS} s)"
        return f"caught: {first_failure(mark)}"
    finally:
        path.write_bytes(original)
        for step in m.get("before", []):
            if run(step) != 0:
                sys.exit(f"`{step}` failed after restoring {m['file']}: later results would be wrong")


def baseline(mutants):
    """Every named test passes before anything is broken."""
    seen = []
    for m in mutants:
        if m["test"] not in seen:
            seen.append(m["test"])
    for test in seen:
        command = f"cargo test --release --quiet {test}"
        if run(command) != 0:
            sys.exit(f"baseline: `{command}` fails without any mutant (see {LOG.relative_to(ROOT)})")
    print(f"baseline: the {len(seen)} tests pass unmutated", flush=True)


def one_line(text):
    return " ⏎ ".join(part.strip() for part in text.strip().splitlines())


def stop(signum, _frame):
    # Unwinds through try_mutant's `finally`, which restores the file.
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    args = sys.argv[1:]
    mutants = load()
    if "--list" in args:
        for m in mutants:
            print(f"{m['promise']}\n    {m['file']}: {m['find']!r} -> {m['replace']!r}\n    {test_command(m)}")
        return
    skip_baseline = "--no-baseline" in args
    wanted = [a for a in args if not a.startswith("--")]
    if wanted:
        mutants = [m for m in mutants if any(a in m["promise"] or a in m["test"] for a in wanted)]
    # A file with uncommitted changes may hold a mutant an earlier run could
    # not restore (killed with SIGKILL): refuse rather than build on it.
    files = sorted({m["file"] for m in mutants})
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *files], cwd=ROOT).returncode != 0:
        sys.exit("mutants: files to mutate have uncommitted changes (git diff HEAD); commit or restore them first")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    LOG.write_text("")
    if not skip_baseline:
        baseline(mutants)
    rows, bad = [], 0
    for n, m in enumerate(mutants, 1):
        started = time.monotonic()
        result = try_mutant(m)
        seconds = time.monotonic() - started
        bad += not result.startswith("caught")
        print(f"[{n}/{len(mutants)}] {seconds:5.0f} s  {m['promise']}\n    {result}", flush=True)
        change = f"`{m['file']}`: `{one_line(m['find'])}` → `{one_line(m['replace'])}`"
        cells = [m["promise"], change, f"`{m['test']}`", result]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        REPORT.write_text("| promise | mutation | test | result |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(f"{len(mutants) - bad} of {len(mutants)} caught; report: {REPORT.relative_to(ROOT)}, log: {LOG.relative_to(ROOT)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
