#!/usr/bin/env bash
# The README's two commands as a new user meets them: each in a new virtual environment with nothing but Python, on
# a clean clone of HEAD, timed, with peak memory and the size of what was installed.
#
#   bash benchmarks/fresh_install.sh [OUT.md] [CASE...]
#
# CASEs (default: all four):
#   test-cuda-torch    the test command with the torch a plain install brings (a CUDA build on Linux x86-64), and
#                      no CUDA toolkit visible (/usr/local/cuda* and nvcc hidden in a private mount namespace; needs
#                      root and unshare, else the case runs with the machine's toolkit and says so)
#   test-cpu-torch     the test command after `pip install torch==2.13.0` (the CPU build)
#   job-cuda-torch     `pip install . && pdfast invert --steps 50`, plain install
#   job-cpu-torch      the same after `pip install torch==2.13.0`
# Writes OUT.md (default benchmarks/results/fresh-install-<machine>.md) with one row per case and the logs beside
# it (OUT.logs/). Time it alone: other jobs on the machine slow every phase (the load average is recorded).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/benchmarks/results/fresh-install-$(uname -m)-$(nproc)cores.md}"
shift || true
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(test-cuda-torch test-cpu-torch job-cuda-torch job-cpu-torch)
logs="${out%.md}.logs"
mkdir -p "$logs"

readme_line() { grep -m1 "^$1" "$repo/README.md"; }
test_cmd="$(readme_line 'pip install -e "\.\[test\]"')"
job_cmd="$(readme_line 'pip install \. && pdfast invert')"

hide_cuda() {  # run "$@" with every CUDA toolkit folder and nvcc hidden, where a private mount namespace is allowed
    local binds="" d
    for d in /usr/local/cuda /usr/local/cuda-* "$(command -v nvcc 2>/dev/null || true)"; do
        [ -e "$d" ] || continue
        d="$(readlink -f "$d")"
        if [ -d "$d" ]; then binds+="mount --bind \"\$empty\" \"$d\"; "; else binds+="mount --bind /dev/null \"$d\"; "; fi
    done
    if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -m true 2>/dev/null; then
        unshare -m bash -c "empty=\$(mktemp -d); $binds exec \"\$@\"" _ "$@"
    else
        echo "note: cannot hide the CUDA toolkit here (needs root and unshare -m); running with it" >&2
        "$@"
    fi
}

phased() {  # a bash script that runs each `&&` part of "$1" in turn, printing "phase <i> <seconds>" after each
    local part i=0 script="set -e"
    local IFS=$'\n'
    for part in $(echo "$1" | sed 's/ && /\n/g'); do
        i=$((i + 1))
        script+=$'\n'"s=\$(date +%s.%N); $part; echo \"phase $i \$(awk \"BEGIN{print \$(date +%s.%N) - \$s}\")\" >&2"
    done
    echo "$script"
}

phase_labels() {  # "<seconds> s `<first two words of part i>`" for each phase line of a log
    local log="$1" cmd="$2"
    grep '^phase ' "$log" | while read -r _ i secs; do
        label="$(echo "$cmd" | sed 's/ && /\n/g' | sed -n "${i}p" | awk '{print $1" "$2" "$3}')"
        printf '%.0f s `%s`; ' "$secs" "$label"
    done | sed 's/; $//'
}

run_case() {
    local name="$1" work venv t0 t1 status=0 cmd
    work="$(mktemp -d "${TMPDIR:-/tmp}/pdfast-fresh.XXXXXX")"
    git clone -q "$repo" "$work/src"
    venv="$work/venv"
    python3 -m venv "$venv"
    case "$name" in test-*) cmd="$test_cmd" ;; job-*) cmd="$job_cmd" ;; esac
    case "$name" in *cpu-torch) cmd="pip install -q torch==2.13.0 && $cmd" ;; esac
    local script
    script="cd '$work/src' && source '$venv/bin/activate' && export OMP_NUM_THREADS=1"$'\n'"$(phased "$cmd")"
    local load0; load0="$(cut -d' ' -f1 /proc/loadavg)"
    t0=$(date +%s)
    if [ "$name" = test-cuda-torch ]; then
        hide_cuda /usr/bin/time -v bash -c "$script" > "$logs/$name.log" 2>&1 || status=$?
    else
        /usr/bin/time -v bash -c "$script" > "$logs/$name.log" 2>&1 || status=$?
    fi
    t1=$(date +%s)
    local kernels=""
    [ "$status" = 0 ] && kernels="$(cd "$work/src" && "$venv/bin/pdfast" env 2>/dev/null | grep -E '^ *kernels:' \
        | sed 's/^ *kernels: //' || true)"
    local rss torch size native result phases
    rss="$(grep -m1 'Maximum resident set size' "$logs/$name.log" | awk '{printf "%.2f GB", $NF / 1048576}' || true)"
    torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
    size="$(du -sh "$venv" | cut -f1)"
    native="$(grep -E 'native backend skipped|CUDA backend (skipped|ON)' "$logs/$name.log" \
              | sed 's/^pdfast native[a-z ]*: //' | tr '\n' ';' | sed 's/;$//' | cut -c1-140 || true)"
    phases="$(phase_labels "$logs/$name.log" "$cmd")"
    result="$(grep -E '[0-9]+ passed' "$logs/$name.log" | tail -1 | sed 's/=//g' | cut -c1-70 || true)"
    [ -n "$result" ] || result="$(grep -m1 '^inverted trigger' "$logs/$name.log" \
        | grep -oE '(^| )(asr|l2) [0-9.]+|verdict [a-z]+' | tr '\n' ' ' || true)"
    echo "| $name | $torch | $status | $((t1 - t0)) s | ${phases:--} | $rss | $size | ${native:--} | ${kernels:--} | ${result:--} | $load0 |" \
        >> "$out"
    rm -rf "$work"
}

{
    echo "# The README's commands in new virtual environments"
    echo
    echo "$(date -u +%Y-%m-%d), $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), python $(python3 -c 'import platform; print(platform.python_version())'),"
    echo "commit $(git -C "$repo" rev-parse --short HEAD); \`bash benchmarks/fresh_install.sh\`. Wall time covers venv,"
    echo "install (from the machine's pip configuration), native build and tests or job; peak RSS is the largest"
    echo "process's (/usr/bin/time -v). Logs: \`$(basename "$logs")/\`."
    echo
    echo "| case | torch | exit | wall | phases | peak RSS | venv size | CUDA ops | \`pdfast env\` kernels | result | load avg at start |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} > "$out"
for c in "${cases[@]}"; do
    echo "fresh_install: $c" >&2
    run_case "$c"
done
echo "fresh_install: wrote $out" >&2
