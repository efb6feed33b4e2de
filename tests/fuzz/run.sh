#!/usr/bin/env bash
# Fuzz fd_apply with libFuzzer for SECONDS (default 60); exit status 1 on any crash.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Builds tests/fuzz/fuzz_apply.c with clang (-fsanitize=fuzzer,address,undefined),
# writes seeds made from real deltas (tests/c/fd_test.c --seeds-only, on generated
# images and on windows of ../shared/corpus and firmware_samples/pairs when present),
# then fuzzes. Work files go to build/fuzz/ (FUZZ_DIR overrides); the corpus grown
# there is kept and reused by later runs. A crash leaves build/fuzz/crash-* and the
# command to reproduce it.
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${FUZZ_DIR:-$repo/build/fuzz}"
clang="${CLANG:-clang}"

if ! command -v "$clang" >/dev/null 2>&1; then
    echo "run.sh: clang not found. Install it (Debian/Ubuntu, as root): apt-get install -y clang" >&2
    echo "        or run 'make install', which does that when run as root." >&2
    exit 2
fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: tests/fuzz/run.sh [SECONDS]" >&2
    exit 2
fi

mkdir -p "$work/corpus"
rm -rf "$work/seeds"
mkdir -p "$work/seeds"

csrc=("$repo"/csrc/fd_*.c)
flags=(-std=c99 -g -O1 -DFD_HAVE_PTHREADS -pthread -I"$repo/csrc")

echo "run.sh: building the fuzz target"
"$clang" "${flags[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    "$here/fuzz_apply.c" "${csrc[@]}" -o "$work/fuzz_apply"

echo "run.sh: making seeds from real deltas"
"$clang" "${flags[@]}" -O2 "$repo/tests/c/fd_test.c" "${csrc[@]}" -o "$work/fd_seeds"
pairs=()
for root in "$repo/../shared/corpus" "$repo/firmware_samples/pairs"; do
    [[ -d "$root" ]] || continue
    for d in "$root"/*/; do
        if [[ -f "$d/old" && -f "$d/new" ]]; then
            pairs+=("$d/old" "$d/new")
        fi
    done
done
"$work/fd_seeds" --seeds "$work/seeds" --seeds-only ${pairs[@]+"${pairs[@]}"}
echo "run.sh: $(ls "$work/seeds" | wc -l) seeds, $(ls "$work/corpus" | wc -l) inputs in the kept corpus"

echo "run.sh: fuzzing for ${seconds}s"
log="$work/fuzz.log"
set +e
"$work/fuzz_apply" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$work/seeds" >"$log" 2>&1
status=$?
set -e
tail -n 25 "$log"
if [[ $status -ne 0 ]]; then
    echo "run.sh: FUZZING FOUND A PROBLEM (exit status $status); full log: $log" >&2
    for crash in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
        [[ -e "$crash" ]] && echo "run.sh: reproduce with: $work/fuzz_apply $crash" >&2
    done
    exit 1
fi
echo "run.sh: no crash in ${seconds}s"
