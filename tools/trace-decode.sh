#!/usr/bin/env bash
# tools/trace-decode.sh BUILD MODEL OUTDIR [DEPTH] - where a CUDA decode
# step's time goes inside its CUDA Graph, kernel by kernel (GPU machine
# only): builds tools/cupti/qg_cupti_trace.c (CUPTI activity records), runs
# `qmoe-graph bench -p 0 -n 24` (at DEPTH cache rows when given) with it
# preloaded, and for the last 16 decode steps prints, summed by kernel name
# per step, each kernel's GPU time, the time from the end of the kernel
# before it to its own start (negative: it started earlier, programmatic
# launch) and how far it moved the step's end (its end minus the latest
# end before it: what the kernel costs the step when kernels overlap; the
# column sums to the step time) into OUTDIR/decode-timeline.txt.  Unlike tools/ncu-decode.sh
# nothing is serialized or flushed: these are the times of the real step.
set -uo pipefail
BUILD=$1 MODEL=$2 OUT=$3 DEPTH=${4:-0}
mkdir -p "$OUT"
CUDA=${CUDA_HOME:-/usr/local/cuda}
LIB=$BUILD/libqg_cupti_trace.so # the CMake target qg_cupti_trace, else built here
if [ ! -f "$LIB" ]; then
    CUPTI_LIB=$(dirname "$(find "$CUDA"/ -name 'libcupti.so' 2>/dev/null | head -1)")
    gcc -std=c11 -O2 -shared -fPIC -o "$LIB" tools/cupti/qg_cupti_trace.c -I"$CUDA/include" \
        -I"$CUDA/extras/CUPTI/include" -L"$CUPTI_LIB" -lcupti -Wl,-rpath,"$CUPTI_LIB" ||
        { echo "cannot build the CUPTI tracer"; exit 1; }
fi
timeout 300 env QG_TRACE_OUT="$OUT/decode-trace.csv" LD_PRELOAD="$LIB" "$BUILD/qmoe-graph" bench \
    "$MODEL" --backend cuda -p 0 -n 24 -d "$DEPTH" -r 1 > "$OUT/trace-bench.log" 2>&1 ||
    { tail -20 "$OUT/trace-bench.log"; exit 1; }
python3 - "$OUT/decode-trace.csv" > "$OUT/decode-timeline.txt" <<'PY'
import re, sys, collections
def short(n):
    """k_mv8<8,1,2> from _Z5k_mv8ILi8ELi1ELi2EEv13qg_i8_mv_args (enough of
    the Itanium mangling for these kernels' names)."""
    m = re.match(r"_Z(\d+)", n)
    if not m:
        return n.split("(")[0].strip()[:44]
    k = int(m.group(1)); i = m.end(); name = n[i:i + k]; rest = n[i + k:]
    if rest.startswith("I"):
        args = re.findall(r"Li(\d+)E|(6__half)|(f)(?=[EL])", rest[1:rest.find("EE") + 1] if "EE" in rest else rest)
        vals = [a or ("half" if b else "float") for a, b, c in args]
        if vals:
            name += "<" + ",".join(vals) + ">"
    return name[:44]
ks = []
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split(",", 3)
    if len(p) < 4:
        continue
    ks.append((int(p[0]), int(p[1]), short(p[3])))
ks.sort()
steps = [i for i, k in enumerate(ks) if k[2].startswith("k_embed")]  # a step starts with the embedding
if len(steps) < 3:
    print("fewer than 3 decode steps found"); sys.exit(0)
use = steps[-17:]
agg = collections.OrderedDict()
tot = busy = gaps = over = 0.0
n = 0
for a, b in zip(use, use[1:]):
    step = ks[a:b]
    tot += (max(e for _, e, _ in step) - step[0][0]) / 1e3
    n += 1
    prev_end = None
    for s, e, name in step:
        g = 0.0 if prev_end is None else (s - prev_end) / 1e3
        x = agg.setdefault(name, [0, 0.0, 0.0, 0.0])
        adv = (e - s) if prev_end is None else max(0, e - prev_end)
        x[0] += 1; x[1] += (e - s) / 1e3; x[2] += g; x[3] += adv / 1e3
        busy += (e - s) / 1e3
        if g > 0: gaps += g
        else: over -= g
        prev_end = e if prev_end is None else max(prev_end, e)
print(f"{n} decode steps: {tot / n:.1f} us per step (first kernel start to last kernel end);")
print(f"  kernels {busy / n:.1f} us, gaps between kernels {gaps / n:.1f} us, overlaps {over / n:.1f} us per step")
print(f"{'kernel':44s} {'n/step':>6s} {'us each':>8s} {'us/step':>8s} {'gap each':>8s} {'gap/step':>8s}"
      f" {'adv each':>8s} {'adv/step':>8s}")
for name, (c, d, g, a) in sorted(agg.items(), key=lambda kv: -kv[1][3]):
    print(f"{name:44s} {c / n:6.1f} {d / c:8.2f} {d / n:8.1f} {g / c:8.2f} {g / n:8.1f}"
          f" {a / c:8.2f} {a / n:8.1f}")
PY
cat "$OUT/decode-timeline.txt"
