#!/bin/sh
# run_fuzz.sh - build and run the GGUF reader fuzzer.
#
#   tests/fuzz/run_fuzz.sh [SECONDS]          build in a temp dir, write the
#                                             seed corpus, fuzz SECONDS
#                                             (default 60); exit != 0 on a
#                                             crash, leak or sanitizer report
#   tests/fuzz/run_fuzz.sh --build-only DIR   only build fuzz_gguf and
#                                             fuzz_seed into DIR
#
# The target is compiled with clang directly (-fsanitize=fuzzer,address,
# undefined) from graph/qg_base.c, graph/qg_dtype.c and the reader, so it
# does not depend on the compiler of the main build.  CC_FUZZ overrides
# clang.  Crash inputs are saved in QG_FUZZ_ARTIFACTS (default: the current
# directory) as crash-<sha1>; replay one with `fuzz_gguf crash-<sha1>`.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cc=${CC_FUZZ:-clang}
lib="$root/graph/qg_base.c $root/graph/qg_dtype.c $root/frontends/qg_gguf_read.c"
flags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -I$root"

build() { # build OUTDIR
    mkdir -p "$1"
    # shellcheck disable=SC2086
    $cc $flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        "$root/tests/fuzz/fuzz_gguf.c" $lib -lm -o "$1/fuzz_gguf"
    # shellcheck disable=SC2086
    $cc $flags "$root/tests/fuzz/fuzz_seed.c" $lib \
        "$root/frontends/qg_gguf_write.c" -lm -o "$1/fuzz_seed"
}

if [ "${1:-}" = "--build-only" ]; then
    [ $# -eq 2 ] || { echo "usage: $0 --build-only DIR" >&2; exit 2; }
    build "$2"
    exit 0
fi

secs=${1:-60}
case $secs in ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
artifacts=${QG_FUZZ_ARTIFACTS:-$(pwd)}
work=$(mktemp -d "${TMPDIR:-/tmp}/qg_fuzz_gguf.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

build "$work"
mkdir "$work/corpus"
"$work/fuzz_seed" "$work/corpus"
echo "run_fuzz.sh: $(ls "$work/corpus" | wc -l) seeds, fuzzing for $secs s"
"$work/fuzz_gguf" -max_total_time="$secs" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work/corpus"
