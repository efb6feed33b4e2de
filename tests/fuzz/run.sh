#!/usr/bin/env bash
# Fuzz with libFuzzer for SECONDS each (default 60): fd_apply (plain patches),
# the MCU decoder fd_lz (in-place payloads), the code transforms with
# fd_apply on code maps (fuzz_code.c), the plain container's reader and the
# code transform's stream (fuzz_patch.c), the HEX and UF2 layouts' joins
# (fuzz_layout.c) and the device patcher fd_inplace with
# its payload decoder and code relocation (fuzz_inplace.c); then with Atheris
# for PY_SECONDS each (default SECONDS) the Python parsers of hostile input:
# the XML and WBXML decoders, the package parser, both patch parsers and the
# reader of a device's answer to a push (tests/fuzz/fuzz_py.py, run by $PYTHON). Exit status 1 on any crash or
# undocumented exception.
#
#   tests/fuzz/run.sh [SECONDS] [PY_SECONDS]
#
# Builds tests/fuzz/fuzz_apply.c and tests/fuzz/fuzz_lz.c with clang
# (-fsanitize=fuzzer,address,undefined), writes seeds made from real deltas and
# in-place payloads (tests/c/fd_test.c --seeds-only and fuzz_lz.c built as a seed
# maker, on generated data and on ../shared/corpus and firmware_samples/pairs when
# present), then fuzzes each target. Work files go to build/fuzz/ (FUZZ_DIR
# overrides); the corpora grown there are kept and reused by later runs. A crash
# leaves build/fuzz/TARGET-crash-* and the command to reproduce it.
set -euo pipefail

seconds="${1:-60}"
py_seconds="${2:-$seconds}"
python="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${FUZZ_DIR:-$repo/build/fuzz}"
clang="${CLANG:-clang}"

if ! command -v "$clang" >/dev/null 2>&1; then
    echo "run.sh: clang not found. Install it (Debian/Ubuntu, as root): apt-get install -y clang" >&2
    echo "        or run 'make install', which does that when run as root." >&2
    exit 2
fi
if ! [[ "$seconds" =~ ^[0-9]+$ && "$py_seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: tests/fuzz/run.sh [SECONDS] [PY_SECONDS]" >&2
    exit 2
fi
if ! "$python" -c "import atheris" 2>/dev/null; then
    echo "run.sh: atheris is not installed for $python: run 'make install' (it is in the [test] extra)" >&2
    exit 2
fi

mkdir -p "$work/corpus" "$work/lz/corpus" "$work/code/corpus" "$work/patch/corpus" "$work/inplace/corpus" "$work/py" \
    "$work/layout/corpus"
rm -rf "$work/seeds" "$work/lz/seeds" "$work/code/seeds" "$work/inplace/seeds" "$work/py/seeds" "$work/layout/seeds"
mkdir -p "$work/seeds" "$work/lz/seeds" "$work/code/seeds" "$work/inplace/seeds" "$work/layout/seeds"

csrc=("$repo"/csrc/fd_*.c)
flags=(-std=c99 -g -O1 -DFD_HAVE_PTHREADS -pthread -I"$repo/csrc")
fuzz_flags=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all)

echo "run.sh: building the fuzz targets"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_apply.c" "${csrc[@]}" -o "$work/fuzz_apply"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_lz.c" "${csrc[@]}" -o "$work/fuzz_lz"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_code.c" "${csrc[@]}" -o "$work/fuzz_code"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_patch.c" "${csrc[@]}" -o "$work/fuzz_patch"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_inplace.c" "${csrc[@]}" -o "$work/fuzz_inplace"
"$clang" "${flags[@]}" "${fuzz_flags[@]}" "$here/fuzz_layout.c" "${csrc[@]}" -o "$work/fuzz_layout"

echo "run.sh: making seeds from real deltas and in-place payloads"
"$clang" "${flags[@]}" -O2 "$repo/tests/c/fd_test.c" "${csrc[@]}" -o "$work/fd_seeds"
"$clang" "${flags[@]}" -O2 -DFUZZ_LZ_SEEDS "$here/fuzz_lz.c" "${csrc[@]}" -o "$work/lz_seeds"
"$clang" "${flags[@]}" -O2 -DFUZZ_INPLACE_SEEDS "$here/fuzz_inplace.c" "${csrc[@]}" -o "$work/inplace_seeds"
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
"$work/lz_seeds" "$work/lz/seeds" ${pairs[@]+"${pairs[@]}"}
"$work/inplace_seeds" "$work/inplace/seeds"
"$python" "$here/fuzz_py.py" --seeds "$work/py/seeds"
# fuzz_layout: a small HEX file and a small UF2 file, split by the package, in the target's input form.
"$python" - "$work/layout/seeds" <<'PY'
import struct, sys
from fotadelta import _core
def record(kind, addr, data):
    body = bytes((len(data), addr >> 8, addr & 0xFF, kind)) + data
    return b":" + (body + bytes((-sum(body) & 0xFF,))).hex().upper().encode() + b"\n"
hex_text = record(4, 0, b"\x08\x00") + record(0, 0, bytes(range(16))) + record(0, 16, bytes(8)) + record(1, 0, b"")
uf2 = b"".join(struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x1000 + 256 * k, 256, k, 2, 0xE48BFF56)
               + bytes(range(256)) + bytes(220) + struct.pack("<I", 0x0AB16F30) for k in range(2))
for name, selector, image, split in (("hex", 0, hex_text, _core.hex_split), ("uf2", 1, uf2, _core.uf2_split)):
    parts = split(image)
    if parts is None:
        continue
    length = len(image) // 512 if selector else len(image)
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(bytes((selector,)) + struct.pack("<HH", len(parts[0]), length) + parts[0] + parts[1])
PY
# fuzz_code: one seed per architecture, a range over a small image of the old pairs' bytes, and
# (byte 0's high bits) copies of that architecture relocated by the seed's two moves.
for arch in 1 2 3 4 5 6 7 8 9; do
    a="\\x0$arch"  # the architecture byte, spelt as an escape for printf's format
    b="$(printf '\\x%02x' $(( arch << 3 | 2 )))"
    printf "${b}\\x01\\x01\\x02\\x00\\x04\\x00\\x04${a}\\x00\\x00\\x00\\x04\\x34\\x12${a}\\x00\\x00\\x00\\x04\\x40\\x12\\x10\\x00\\x08\\x00\\x00\\x01\\x40\\x00\\x06\\x00\\x00\\x80\\x10\\x00" \
        >"$work/code/seeds/arch$arch"
    head -c 2048 /dev/urandom >>"$work/code/seeds/arch$arch"
done

# fuzz NAME SECONDS CORPUS SEEDS COMMAND...: runs one target for the time given; 1 on a crash.
fuzz() {
    local name="$1" time="$2" corpus="$3" seeds="$4" log="$work/$1.log" status
    shift 4
    echo "run.sh: $name: $(ls "$seeds" | wc -l) seeds, $(ls "$corpus" | wc -l) inputs in the kept corpus;" \
        "fuzzing for ${time}s"
    set +e
    "$@" -max_total_time="$time" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 -artifact_prefix="$work/$name-" "$corpus" "$seeds" >"$log" 2>&1
    status=$?
    set -e
    tail -n 8 "$log"
    if [[ $status -ne 0 ]]; then
        echo "run.sh: FUZZING $name FOUND A PROBLEM (exit status $status); full log: $log" >&2
        for crash in "$work/$name"-crash-* "$work/$name"-leak-* "$work/$name"-timeout-* "$work/$name"-oom-*; do
            [[ -e "$crash" ]] && echo "run.sh: reproduce with: $* $crash" >&2
        done
        return 1
    fi
    echo "run.sh: $name: no crash in ${time}s"
}

failed=0
fuzz fuzz_apply "$seconds" "$work/corpus" "$work/seeds" "$work/fuzz_apply" || failed=1
fuzz fuzz_lz "$seconds" "$work/lz/corpus" "$work/lz/seeds" "$work/fuzz_lz" || failed=1
fuzz fuzz_code "$seconds" "$work/code/corpus" "$work/code/seeds" "$work/fuzz_code" || failed=1
fuzz fuzz_layout "$seconds" "$work/layout/corpus" "$work/layout/seeds" "$work/fuzz_layout" || failed=1
fuzz fuzz_patch "$seconds" "$work/patch/corpus" "$work/py/seeds/plain" "$work/fuzz_patch" || failed=1
fuzz fuzz_inplace "$seconds" "$work/inplace/corpus" "$work/inplace/seeds" "$work/fuzz_inplace" || failed=1
for target in xml wbxml package plain inplace push; do
    mkdir -p "$work/py/$target"
    fuzz "py_$target" "$py_seconds" "$work/py/$target" "$work/py/seeds/$target" \
        "$python" "$here/fuzz_py.py" "$target" || failed=1
done
exit $failed
