#!/usr/bin/env bash
# Runs every shell command README.md shows, as a new user pastes it: each one
# alone in a fresh bash with a clean environment (no demo.env, no MASKPIPE_*
# or AWS_* variables), from the checkout, against the local stack, in the
# README's order (so `just run --drain` fills the database before the
# recipes that read it). Fails if any command fails.
#
# A command whose trailing comment is a single value (`# 99`) must print
# that value.
#
# Commands come from ```sh, ```bash and ```console blocks (in console blocks,
# only lines starting with `$ `). A line ending in `\`, `|`, `&&` or `||`
# continues on the next; lines starting with `#` are comments.
#
# A few commands are not run: they run until stopped, run this script, need
# Docker, or stand for a deployment's own files. They are matched by the
# list below and printed with the reason.
#
#   scripts/readme-commands.sh [README]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
readme="${1:-README.md}"

# Extended regular expression :: why it is not run. A `just` command is
# matched where a command starts (alone or after `&&`), so that `just test`
# does not also skip `just test-transform`.
skips=(
    '(^|&& *)just test( |$) :: runs this script (and every test)'
    '(^|&& *)just run( *$| *#| +[^-]| +--[^d]) :: runs until Ctrl-C (`just run --drain` is run)'
    '(^|&& *)just bench :: a benchmark suite of many minutes'
    '(^|&& *)just down :: stops the stack the other commands use'
    'docker compose :: needs Docker'
    '/opt/maskpipe :: a deployment: placeholder files and paths'
    '^maskpipe  :: a deployment: its own binary and settings (host/tests/rekey.rs runs the key rotation against LocalStack KMS)'
)

# The README's commands, NUL-separated, continuation lines joined.
extract() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
out = []
for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
    if lang not in ("sh", "bash", "console"):
        continue
    command = ""
    for line in body.splitlines():
        if lang == "console":
            if command == "" and not line.startswith("$ "):
                continue
            line = line[2:] if line.startswith("$ ") else line
        if command == "" and (not line.strip() or line.lstrip().startswith("#")):
            continue
        command = f"{command}\n{line}" if command else line
        code = re.sub(r"\s+#[^'\"]*$", "", line).rstrip()
        if code.endswith(("\\", "|", "&&", "||")):
            continue
        out.append(command)
        command = ""
    if command:
        out.append(command)
sys.stdout.write("".join(c + "\0" for c in out))
PY
}

# What a fresh login shell has: no demo.env, no project settings. PATH keeps
# cargo and just; MASKPIPE_STACK_DIR (where `just up` keeps the stack, when
# it is not under .data/) is where the stack is, not a setting of the demo.
clean_env=(env -i "PATH=$PATH" "HOME=$HOME" "USER=${USER:-$(id -un)}" "LANG=${LANG:-C.UTF-8}" "TERM=dumb")
for name in CARGO_HOME RUSTUP_HOME RUSTUP_TOOLCHAIN MASKPIPE_STACK_DIR; do
    [ -n "${!name:-}" ] && clean_env+=("$name=${!name}")
done

# Extracted first, so a failed extraction fails the run (a process
# substitution's status would be lost).
commands="$(mktemp)"
log="$(mktemp)"
# The output of reveal commands is the sample's plaintext PII: never left on disk.
trap 'rm -f "$commands" "$log"' EXIT
extract "$readme" >"$commands"

# The last lines of the command's output. What a reveal prints is
# plaintext PII: only its line count reaches the log.
show() {
    if grep -q reveal <<<"$command"; then
        echo "     | ($(wc -l <"$log") lines of revealed output, not shown)"
    else
        sed 's/^/     | /' "$log" | tail -n "$1"
    fi
}

ran=0
skipped=0
failed=()
while IFS= read -r -d '' command; do
    reason=""
    for skip in "${skips[@]}"; do
        if grep -Eq -- "${skip%% :: *}" <<<"$command"; then
            reason="${skip#* :: }"
            break
        fi
    done
    shown="$(head -c 160 <<<"${command//$'\n'/ ⏎ }")"
    if [ -n "$reason" ]; then
        printf '\033[33mskip\033[0m %s\n     (%s)\n' "$shown" "$reason"
        skipped=$((skipped + 1))
        continue
    fi
    printf '\033[34mrun \033[0m %s\n' "$shown"
    ran=$((ran + 1))
    # A command whose comment is a single value (`# 99`, `# 199.172.111.135`)
    # promises that value: its output must show it, as a word.
    expected="$(sed -nE 's/.*[[:space:]]#[[:space:]]*([0-9][0-9.:-]*)[[:space:]]*$/\1/p' <<<"$command" | tail -n 1)"
    if timeout 900 "${clean_env[@]}" bash -o pipefail -c "$command" </dev/null >"$log" 2>&1 &&
        { [ -z "$expected" ] || grep -qw -- "$expected" "$log" || { echo "     | the output does not show $expected, as the README says"; false; }; }; then
        show 8
    else
        status=$?
        show 40
        printf '\033[31mFAIL\033[0m (exit %s) %s\n' "$status" "$shown"
        failed+=("$shown")
    fi
    : >"$log"
done <"$commands"

echo
echo "README commands: $ran ran, $skipped skipped, ${#failed[@]} failed"
# Fewer than the README holds today means commands were lost on the way
# (a fence renamed, a block broken): that is a failure too.
min_ran=15
if [ "$ran" -lt "$min_ran" ]; then
    echo "only $ran commands ran (at least $min_ran expected): did the README's code blocks change?" >&2
    exit 1
fi
if [ "${#failed[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${failed[@]}"
    exit 1
fi
