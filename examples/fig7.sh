#!/usr/bin/env bash
# Figure 7 of the paper (Appendix F.1): a 4-layer ReLU network (hidden 20, 20, 20;
# L_h = 4) trained by GD from small random weights on teacher data from a smaller 4-layer
# ReLU net (3, 3, 3). Claim: rows/columns that become small near the origin remain small
# until the next saddle, and they follow the zero-preserving pattern.
# 1. GD from the paper's δ = 0.2.
# 2. The same run from δ = 1e-6: examples/relu_flow.py integrates the NCF flow from w0 up
#    to radius 0.1 (ψ(t) ≈ δ·u(t/δ²) there, to relative O(0.1^4)) and GD continues from
#    that point (--init, --delta 0.1); the plateau before it (δ^-2·T_b ≈ 3e13 time units)
#    is skipped.
# 3. relu_flow.py: the NCF flow from w0 against both runs at escape and saddle, and how far
#    the flow is from its limit w* at each radius.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
PY="${PYTHON:-python}"
NET=(--hidden 20,20,20 --act relu --reduction mean)
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 7: teacher data, then GD from δ = 0.2 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig7_data.npz" --hidden 3,3,3 --act relu --seed 0 --force
run ncfkit escape "$OUT/fig7_data.npz" "${NET[@]}" --delta 0.2 --lr 0.05 --max-time 2000 \
    --json --out "$OUT/fig7.h5" --force > "$OUT/fig7.json"
echo "measurements: $OUT/fig7.json" >&2

echo "Figure 7 at δ = 1e-6: the NCF flow from w0 to radius 0.1, then GD" >&2
run "$PY" examples/relu_flow.py "$OUT/fig7_data.npz" --hidden 20,20,20 --reduction mean \
    --start "$OUT/fig7_start.npz" --radius 0.1 --for-delta 1e-6 > "$OUT/fig7_start.json"
run ncfkit escape "$OUT/fig7_data.npz" "${NET[@]}" --init "$OUT/fig7_start.npz" --delta 0.1 --lr 0.05 \
    --max-time 2000 --json --out "$OUT/fig7_small.h5" --force > "$OUT/fig7_small.json"
echo "measurements: $OUT/fig7_small.json" >&2

run "$PY" examples/relu_flow.py "$OUT/fig7_data.npz" "$OUT/fig7.h5" "$OUT/fig7_small.h5=1e-6" \
    --hidden 20,20,20 --reduction mean --rho-max 700 > "$OUT/fig7_flow.json"
echo "the runs against the NCF flow from w0: $OUT/fig7_flow.json" >&2
run ncfkit plot "$OUT/fig7.h5" -o "$OUT/fig7.png" --force
run ncfkit plot "$OUT/fig7_small.h5" -o "$OUT/fig7_small.png" --force
