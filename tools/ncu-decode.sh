#!/usr/bin/env bash
# tools/ncu-decode.sh BUILD MODEL OUTDIR - where a CUDA decode step's time
# goes, kernel by kernel, with Nsight Compute (GPU machine only):
#   1. one decode step of MODEL with plain launches (QG_CUDA_GRAPH=0):
#      every kernel's duration and DRAM bytes, summed by kernel name
#      (OUTDIR/decode-kernels.txt; the raw CSV beside it)
#   2. the decode product kernels of the kernel lab (lab_matvec's first
#      k_mv8 / k_gu8 / k_dn8 launches): speed of light, occupancy, warp
#      states (OUTDIR/lab-kernels.txt)
# Clocks are left as they are (--clock-control none); caches are flushed
# between kernels (ncu's default), so each kernel reads its weights from
# DRAM as it does in a real step.
set -uo pipefail
BUILD=$1 MODEL=$2 OUT=$3
mkdir -p "$OUT"
NCU=${NCU:-ncu}
command -v "$NCU" >/dev/null || { echo "ncu not found"; exit 1; }
# a decode step is ~8 launches per layer; skip the first tokens (warm-up)
QG_CUDA_GRAPH=0 timeout 400 "$NCU" --clock-control none --csv --launch-skip 1200 --launch-count 420 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
    "$BUILD/qmoe-graph" bench "$MODEL" --backend cuda -p 0 -n 8 -r 1 > "$OUT/decode-kernels.csv" 2> "$OUT/ncu-decode.err"
python3 - "$OUT/decode-kernels.csv" > "$OUT/decode-kernels.txt" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ix = {h: i for i, h in enumerate(hdr)}
per = collections.defaultdict(dict)
for r in rows:
    per[(r[ix["ID"]], r[ix["Kernel Name"]])][r[ix["Metric Name"]]] = (r[ix["Metric Unit"]], r[ix["Metric Value"]])
def val(m, k):
    u, v = m.get(k, ("", "0")); v = float(v.replace(",", ""))
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3,
             "byte": 1, "B": 1, "Kbyte": 1e3, "KB": 1e3, "Mbyte": 1e6, "MB": 1e6, "Gbyte": 1e9, "GB": 1e9}
    return v * scale.get(u, 1)
agg = collections.OrderedDict()
for (i, name), m in per.items():
    short = name.split("(")[0][:60]
    a = agg.setdefault(short, [0, 0.0, 0.0, m.get("launch__grid_size", ("", "?"))[1], m.get("launch__block_size", ("", "?"))[1], m.get("launch__registers_per_thread", ("", "?"))[1]])
    a[0] += 1; a[1] += val(m, "gpu__time_duration.sum"); a[2] += val(m, "dram__bytes_read.sum")
tot = sum(a[1] for a in agg.values())
print(f"{len(per)} kernels, {tot:.1f} us in total (serialized, caches flushed)")
print(f"{'kernel':60s} {'n':>4s} {'us/call':>8s} {'total us':>9s} {'%':>5s} {'MB/call':>8s} {'GB/s':>7s} grid block regs")
for k, a in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:60s} {a[0]:4d} {a[1]/a[0]:8.2f} {a[1]:9.1f} {100*a[1]/tot:5.1f} {a[2]/a[0]/1e6:8.2f} {a[2]/a[1]/1e3 if a[1] else 0:7.0f} {a[3]} {a[4]} {a[5]}")
PY
cat "$OUT/decode-kernels.txt"
for k in k_mv8 k_gu8 k_dn8; do
    [ -x "$BUILD/lab_matvec" ] || break
    timeout 120 "$NCU" --clock-control none -k "regex:$k" --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        --section MemoryWorkloadAnalysis "$BUILD/lab_matvec" 1 >> "$OUT/lab-kernels.txt" 2>&1
done
grep -E "k_mv8|k_gu8|k_dn8|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots|Compute \(SM\)|Stall|L1/TEX Hit|L2 Hit" "$OUT/lab-kernels.txt" | head -80
