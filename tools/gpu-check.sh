#!/usr/bin/env bash
# tools/gpu-check.sh [SUMMARY_FILE] - the CUDA executor on a GPU machine, in
# one command:
#   1. configure + build with CUDA (Release) in $QG_GPU_BUILD (build-gpu)
#   2. the CUDA tests (ctest -R cuda: every kernel vs float64, end-to-end on
#      synthetic models vs the reference, llama.cpp and the CPU executor)
#   3. the 30b-a3b Q4_K_M file in $QG_MODEL_DIR (/tmp): `qmoe-graph synth`,
#      or with QG_FAST_MODEL=1 the kernel lab's random-block generator
#      (same tensor table, types and metadata; seconds instead of minutes)
#   4. qmoe-graph bench --backend cuda: -p 512 -n 128 -r 5, then tg128 at a
#      4096-token depth; peak GPU memory read with nvidia-smi meanwhile
#   5. compute-sanitizer memcheck on a prefill + decode run of a tiny model
#   6. optional: QG_GPU_LAB=1 runs the kernel lab (tools/kernels),
#      QG_GPU_GREEDY=1 the 64-token greedy CUDA-vs-CPU check on the big file,
#      QG_GPU_AGREE="f16 [f32]" the same through the CLI (agree-device.sh),
#      with QG_GPU_AGREE_CONTROL=1 also CPU AVX2 vs CPU AVX-512 (control),
#      QG_GPU_PROFILE=1 `qmoe-graph profile` (per-op GPU times),
#      QG_GPU_AB="VAR=value ...;VAR=value ..." tg128 benches under each
#      environment, after one with the defaults (QG_GPU_AB_DEPTH=N: each
#      also at an N-token KV depth)
#      QG_GPU_AB_BEST=1 the fastest A/B set and the defaults once more,
#      back to back, also at a 4096-token depth (and traced too with
#      QG_GPU_TRACE=1),
#      QG_GPU_TRACE=1 tools/trace-decode.sh on the defaults (=best: on the
#      fastest A/B set alone; per-kernel
#      times inside the CUDA Graph; the timeline goes beside SUMMARY_FILE)
# (QG_GPU_LOG sets the log file; QG_GPU_SKIP_TESTS=1 skips step 2,
# QG_GPU_TESTS=REGEX narrows it to the ctest names matching REGEX;
# QG_GPU_DEPTH=0 skips the bench at a 4096-token depth; QG_GPU_PREBUILT=1
# takes the binaries already in $QG_GPU_BUILD, built elsewhere, and runs
# its tests/test_* programs matching QG_GPU_TESTS without ctest, each
# within QG_GPU_TEST_LIMIT seconds (420), so that a hung test leaves time
# for the benches; QG_TEST_FILTER / QG_TEST_SKIP, read by the test
# programs, run or skip the cmocka tests whose names match.)
# and prints a short summary (also written to SUMMARY_FILE when given).
#
# Carried helpers, when present in the checkout (both git-ignored):
#   .oracle/{lib,include}   llama.cpp's libraries and headers (the oracle of
#                           the end-to-end test); without it the e2e test runs
#                           with QG_ALLOW_NO_ORACLE=1
#   .cuda-dev/cmocka/       cmocka.h and libcmocka.so* for machines without it
#   .cuda-dev/pcre2/        pcre2.h, libpcre2-8.so* and a relocatable .pc file
#                           (without PCRE2 the CLI cannot tokenize text, and
#                           the agreement step fails)
# Every step has a time limit; a failed step is reported and the rest go on.
# Exit status: 0 when every step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUMMARY=${1:-}
BUILD=${QG_GPU_BUILD:-build-gpu}
MODEL_DIR=${QG_MODEL_DIR:-/tmp}
MODEL=$MODEL_DIR/30b-a3b-q4_k_m.gguf
LOG=${QG_GPU_LOG:-$BUILD/gpu-check.log}
mkdir -p "$BUILD"
: > "$LOG"
declare -a LINES=()
FAILED=0

note() { LINES+=("$1"); echo "== $1"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# step NAME LIMIT_SECONDS CMD... : run with a time limit, log, record.
step() {
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(now)
    echo "---- $name: $*" | tee -a "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        note "$name: ok ($(secs "$t0") s)"
    else
        [ $rc -eq 124 ] && note "$name: TIMED OUT after ${limit} s" || note "$name: FAILED (exit $rc, $(secs "$t0") s)"
        FAILED=1
        tail -n 40 "$LOG"
    fi
    return $rc
}

GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
note "GPU: ${GPU:-none found} ($(date -u +%Y-%m-%dT%H:%MZ)); nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

# ---- 1. build ------------------------------------------------------------
ARGS=(-DCMAKE_BUILD_TYPE=Release -DQG_CUDA=ON)
command -v ninja >/dev/null && ARGS+=(-G Ninja)
if [ -d .oracle/lib ]; then
    ARGS+=(-DQG_LLAMA_DIR="$PWD/.oracle/lib" -DQG_LLAMA_INCLUDE="$PWD/.oracle/include")
    export LD_LIBRARY_PATH="$PWD/.oracle/lib:${LD_LIBRARY_PATH:-}"
else
    export QG_ALLOW_NO_ORACLE=1
fi
if [ -f .cuda-dev/pcre2/lib/pkgconfig/libpcre2-8.pc ] && ! pkg-config --exists libpcre2-8 2>/dev/null; then
    # the tokenizer's regex library, for machines without libpcre2-dev
    export PKG_CONFIG_PATH="$PWD/.cuda-dev/pcre2/lib/pkgconfig:${PKG_CONFIG_PATH:-}"
    export LD_LIBRARY_PATH="$PWD/.cuda-dev/pcre2/lib:${LD_LIBRARY_PATH:-}"
fi
if [ -f .cuda-dev/cmocka/cmocka.h ]; then
    ARGS+=(-DCMOCKA_INCLUDE="$PWD/.cuda-dev/cmocka" -DCMOCKA_LIB="$PWD/.cuda-dev/cmocka/libcmocka.so")
    export LD_LIBRARY_PATH="$PWD/.cuda-dev/cmocka:${LD_LIBRARY_PATH:-}"
fi
if [ "${QG_GPU_PREBUILT:-0}" = 1 ]; then
    # binaries built elsewhere (same architecture) and carried in $BUILD:
    # qmoe-graph and the tests/test_cuda_* programs the tests step runs
    note "build: prebuilt binaries in $BUILD ($(git log -1 --format=%h 2>/dev/null))"
    [ -x "$BUILD/qmoe-graph" ] || { note "no $BUILD/qmoe-graph"; printf '%s\n' "${LINES[@]}"; exit 1; }
else
    step configure 300 cmake -S . -B "$BUILD" "${ARGS[@]}" &&
        step build 420 cmake --build "$BUILD" -j"$(nproc)" ||
        { printf '%s\n' "${LINES[@]}"; exit 1; }
fi
QG=$BUILD/qmoe-graph

# ---- 2. tests ------------------------------------------------------------
TESTS=${QG_GPU_TESTS:-cuda}
if [ "${QG_GPU_SKIP_TESTS:-0}" = 1 ]; then
    :
elif [ "${QG_GPU_PREBUILT:-0}" = 1 ]; then
    # no ctest here: each carried test program whose name matches, with the
    # environment ctest gives it
    for t in "$BUILD"/tests/test_*; do
        [ -x "$t" ] && [[ "$(basename "$t")" =~ $TESTS ]] || continue
        step "$(basename "$t")" "${QG_GPU_TEST_LIMIT:-420}" env QG_BUILD_DIR="$PWD/$BUILD" \
            QG_SOURCE_DIR="$PWD" "$t"
    done
else
    step "ctest -R $TESTS" 420 bash -c "cd '$BUILD' && ctest -R '$TESTS' -V -j2"
fi
grep -E ":   (tiny|small|gqa1|refused|mixed|--n-cpu-moe)|ERROR|FAILED|tests passed|tests failed" "$LOG" |
    sed 's/^/   /' | head -60

# ---- 3. the 30b-a3b file ---------------------------------------------------
if [ ! -f "$MODEL" ]; then
    if [ "${QG_FAST_MODEL:-0}" = 1 ]; then
        step "model (lab_fastmodel)" 300 "$BUILD/lab_fastmodel" "$MODEL" 30b-a3b q4_k_m
        MODEL_KIND="lab_fastmodel (synth's tensor table, random blocks)"
    else
        step "model (qmoe-graph synth)" 1500 "$QG" synth "$MODEL" --preset 30b-a3b --ftype q4_k_m
        MODEL_KIND="qmoe-graph synth --preset 30b-a3b --ftype q4_k_m"
    fi
else
    MODEL_KIND="existing file"
fi
FILE_GIB=$(awk -v b="$(stat -c %s "$MODEL" 2>/dev/null || echo 0)" 'BEGIN { printf "%.2f", b / 1073741824 }')
note "model: $MODEL ($FILE_GIB GiB, $MODEL_KIND)"

# ---- 4. bench ------------------------------------------------------------
if [ -f "$MODEL" ]; then
    MEMLOG=$BUILD/gpu-mem.log
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$MEMLOG" 2>/dev/null &
    SMI=$!
    step "bench pp512 tg128" 400 "$QG" bench "$MODEL" --backend cuda -p 512 -n 128 -r 5
    grep -E "^\| .*(pp|tg)[0-9]" "$LOG" | tail -2 | sed 's/^/   /'
    if [ "${QG_GPU_DEPTH:-4096}" != 0 ]; then
        step "bench tg128 @ d4096" 400 "$QG" bench "$MODEL" --backend cuda -p 0 -n 128 -d 4096 -r 5
        grep -E "^\| .*tg[0-9]" "$LOG" | tail -1 | sed 's/^/   /'
    fi
    kill "$SMI" 2>/dev/null
    wait "$SMI" 2>/dev/null
    PEAK=$(sort -n "$MEMLOG" 2>/dev/null | tail -1)
    note "peak GPU memory during bench: ${PEAK:-?} MiB (file $FILE_GIB GiB; KV f16 at -c 4224: 0.39 GiB)"
    for l in $(grep -E "^\| .*(pp|tg)[0-9]" "$LOG" | awk -F'|' '{gsub(/ /,"",$7); gsub(/ /,"",$8); print $7"="$8}'); do
        note "bench $l tok/s"
    done
fi

if [ -f "$MODEL" ] && [ "${QG_GPU_TRACE:-0}" = 1 ]; then # (=best: the fastest A/B set only)
    TDIR=$(dirname "${SUMMARY:-$BUILD/x}")/trace
    step "trace-decode" 300 tools/trace-decode.sh "$BUILD" "$MODEL" "$TDIR"
    head -40 "$TDIR/decode-timeline.txt" 2>/dev/null | sed 's/^/   /'
fi
if [ -f "$MODEL" ] && [ "${QG_GPU_PROFILE:-0}" = 1 ]; then
    step "profile pp512 + tg32" 300 "$QG" profile "$MODEL" --backend cuda -p 512 -n 32
    sed -n '/^profile of/,/^---- /p' "$LOG" | head -70 | sed 's/^/   /'
fi
if [ -f "$MODEL" ] && [ -n "${QG_GPU_AB:-}" ]; then
    # A/B runs of decode, one per ';'-separated environment of QG_GPU_AB
    # (e.g. "QG_CUDA_PDL=0;QG_CUDA_PREFETCH=0"), right after the default
    # one of the same run
    IFS=';' read -r -a AB_SETS <<< "$QG_GPU_AB"
    for ab in "default" "${AB_SETS[@]}"; do
        [ "$ab" = default ] && envs=() || read -r -a envs <<< "$ab"
        step "A/B tg128 with $ab" 200 env "${envs[@]}" "$QG" bench "$MODEL" --backend cuda -p 0 -n 128 -r 5
        tg=$(grep -E "^\| .*tg[0-9]" "$LOG" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}')
        note "A/B tg128 with $ab: $tg tok/s"
        # the fastest set so far (QG_GPU_AB_BEST: measured again below)
        if [ "$ab" != default ] && awk -v a="${tg%%±*}" -v b="${best_tg:-0}" 'BEGIN { exit !(a + 0 > b + 0) }'; then
            best_tg=${tg%%±*} best_ab=$ab
        fi
        [ "$ab" = default ] && base_tg=${tg%%±*}
        if [ -n "${QG_GPU_AB_DEPTH:-}" ]; then # the same at a KV depth
            step "A/B tg128 @ d$QG_GPU_AB_DEPTH with $ab" 200 env "${envs[@]}" "$QG" bench "$MODEL" \
                --backend cuda -p 0 -n 128 -d "$QG_GPU_AB_DEPTH" -r 3
            tg=$(grep -E "^\| .*tg[0-9]" "$LOG" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}')
            note "A/B tg128 @ d$QG_GPU_AB_DEPTH with $ab: $tg tok/s"
        fi
    done
fi

if [ -n "${best_ab:-}" ] && [ "${QG_GPU_AB_BEST:-0}" = 1 ]; then
    # the fastest A/B set against the defaults once more, back to back, and
    # at a 4096-token depth
    note "A/B fastest set: $best_ab ($best_tg against $base_tg tok/s)"
    read -r -a envs <<< "$best_ab"
    for ab in default "$best_ab"; do
        [ "$ab" = default ] && e2=() || e2=("${envs[@]}")
        step "A/B again tg128 with $ab" 200 env "${e2[@]}" "$QG" bench "$MODEL" --backend cuda -p 0 -n 128 -r 5
        note "A/B again tg128 with $ab: $(grep -E "^\| .*tg[0-9]" "$LOG" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}') tok/s"
        step "A/B again tg128 @ d4096 with $ab" 200 env "${e2[@]}" "$QG" bench "$MODEL" --backend cuda -p 0 -n 128 -d 4096 -r 3
        note "A/B again tg128 @ d4096 with $ab: $(grep -E "^\| .*tg[0-9]" "$LOG" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}') tok/s"
    done
    if [ "${QG_GPU_TRACE:-0}" != 0 ]; then
        TDIR=$(dirname "${SUMMARY:-$BUILD/x}")/trace-best
        step "trace-decode ($best_ab)" 300 env "${envs[@]}" tools/trace-decode.sh "$BUILD" "$MODEL" "$TDIR"
    fi
fi

# ---- 5. memcheck ---------------------------------------------------------
# (QG_GPU_MEMCHECK_PRESET=small: a model the integer decode products and
# the head path take, with the real vocabulary; QG_GPU_MEMCHECK_ENV: the
# switches it runs under, e.g. "QG_CUDA_RPART=1")
MPRESET=${QG_GPU_MEMCHECK_PRESET:-tiny}
MVOCAB=bytes
[ "$MPRESET" = tiny ] || MVOCAB=real
TINY=$MODEL_DIR/qg-gpucheck-$MPRESET.gguf
[ -f "$TINY" ] || step "synth $MPRESET" 120 "$QG" synth "$TINY" --preset "$MPRESET" --ftype q4_k_m --vocab $MVOCAB
read -r -a MENV <<< "${QG_GPU_MEMCHECK_ENV:-}"
if command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer memcheck ($MPRESET${QG_GPU_MEMCHECK_ENV:+, $QG_GPU_MEMCHECK_ENV})" 300 \
        env "${MENV[@]}" compute-sanitizer --tool memcheck --error-exitcode 9 \
        --leak-check no "$QG" bench "$TINY" --backend cuda -p 24 -n 6 -r 1 -b 16
else
    note "compute-sanitizer: not found, skipped"
fi

# ---- 6. optional -----------------------------------------------------------
if [ "${QG_GPU_LAB:-0}" = 1 ]; then
    # every kernel-lab program (tools/kernels/*.cu) but the model generator
    for lab in "$BUILD"/lab_*; do
        [ -x "$lab" ] && [ "$(basename "$lab")" != lab_fastmodel ] || continue
        step "kernel lab $(basename "$lab")" 300 "$lab" 20
        sed -n '/^device:/,$p' "$LOG" | tail -40 | sed 's/^/   /'
    done
fi
if [ -n "${QG_GPU_AGREE:-}" ] && [ -f "$MODEL" ]; then
    # greedy agreement through the CLI (tools/agree-device.sh), KV types
    # QG_GPU_AGREE (e.g. "f16" or "f16 f32")
    step "greedy agreement vs CPU (KV $QG_GPU_AGREE)" 500 env AGREE_KV="$QG_GPU_AGREE" \
        tools/agree-device.sh "$QG" cuda "$BUILD/agree.txt"
    if [ "${QG_GPU_AGREE_CONTROL:-0}" = 1 ]; then
        # the control: two CPU executors (AVX-512 and AVX2 kernels)
        step "greedy agreement, CPU AVX2 vs AVX-512 (control)" 500 env AGREE_KV="$QG_GPU_AGREE" \
            tools/agree-device.sh "$QG" cpu-avx2 "$BUILD/agree.txt"
    fi
    sed 's/^/   /' "$BUILD/agree.txt" 2>/dev/null
    while read -r l; do note "$l"; done < "$BUILD/agree.txt"
fi
if [ "${QG_GPU_GREEDY:-0}" = 1 ] && [ -f "$MODEL" ]; then
    step "greedy 64 tokens x 10 prompts vs CPU" 600 env QG_CUDA_BIG_MODEL="$MODEL" "$BUILD/tests/test_cuda_e2e"
    grep -E "identical on|first difference" "$LOG" | tail -12 | sed 's/^/   /'
fi

# ---- summary ---------------------------------------------------------------
{
    echo "# gpu-check summary"
    echo
    for l in "${LINES[@]}"; do echo "- $l"; done
    echo
    echo "full log: $LOG"
} > "$BUILD/gpu-check-summary.md"
echo
cat "$BUILD/gpu-check-summary.md"
[ -n "$SUMMARY" ] && cp "$BUILD/gpu-check-summary.md" "$SUMMARY"
exit $FAILED
