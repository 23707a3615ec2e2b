#!/usr/bin/env bash
# Figure 6 of the paper: a 3-layer ReLU network (hidden 20, 30; L_h = 3) trained by GD
# from small random weights on teacher data from a smaller 3-layer ReLU net (3, 3).
# Claim: rows of W_l and the matching columns of W_{l+1} that are small before escape
# stay small until the next saddle, even for deeper ReLU nets.
# 1. GD from the paper's δ = 0.1 and from δ = 0.01 (one batch).
# 2. The same run from δ = 1e-8: examples/relu_flow.py integrates the NCF flow from w0 up
#    to radius 0.05 (ψ(t) ≈ δ·u(δt) there, to relative O(0.05^3)) and GD continues from
#    that point (--init, --delta 0.05); the plateau before it (δ^-1·T_b ≈ 2.5e9 time units)
#    is skipped.
#    fig6_check.json: the same shortcut for δ = 0.01, to compare with the direct run.
# 3. relu_flow.py: the NCF flow from w0 against the runs at escape and saddle, and how far
#    the flow is from its limit w* at each radius.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
PY="${PYTHON:-python}"
NET=(--hidden 20,30 --act relu --reduction mean)
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 6: teacher data, then GD from δ = 0.1 and 0.01 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig6_data.npz" --hidden 3,3 --act relu --seed 0 --force
# --max-steps 100000: this net's NCF flow from w0 never settles (it creeps along a ridge of
# parallel neurons); 100,000 steps bring it close enough for the Clarke ascent to certify w*
run ncfkit escape "$OUT/fig6_data.npz" "${NET[@]}" --delta 0.1 --delta 0.01 --lr 0.05 --max-time 3000 \
    --max-steps 100000 --json --out "$OUT/fig6.h5" --force > "$OUT/fig6.json"
echo "measurements: $OUT/fig6.json" >&2

echo "Check of the shortcut at δ = 0.01 (run directly above): the NCF flow to radius 0.05, then GD" >&2
run "$PY" examples/relu_flow.py "$OUT/fig6_data.npz" --hidden 20,30 --reduction mean \
    --start "$OUT/fig6_check_start.npz" --radius 0.05 --for-delta 0.01 > "$OUT/fig6_check_start.json"
run ncfkit escape "$OUT/fig6_data.npz" "${NET[@]}" --init "$OUT/fig6_check_start.npz" --delta 0.05 --lr 0.05 \
    --max-time 600 --json --out "$OUT/fig6_check.h5" --force > "$OUT/fig6_check.json"

echo "Figure 6 at δ = 1e-8: the NCF flow from w0 to radius 0.05, then GD" >&2
run "$PY" examples/relu_flow.py "$OUT/fig6_data.npz" --hidden 20,30 --reduction mean \
    --start "$OUT/fig6_start.npz" --radius 0.05 --for-delta 1e-8 > "$OUT/fig6_start.json"
run ncfkit escape "$OUT/fig6_data.npz" "${NET[@]}" --init "$OUT/fig6_start.npz" --delta 0.05 --lr 0.05 \
    --max-time 600 --json --out "$OUT/fig6_small.h5" --force > "$OUT/fig6_small.json"
echo "measurements: $OUT/fig6_small.json" >&2

RUNS=("$OUT/fig6.h5" "$OUT/fig6_check.h5=0.01" "$OUT/fig6_small.h5=1e-8")
run "$PY" examples/relu_flow.py "$OUT/fig6_data.npz" "${RUNS[@]}" \
    --hidden 20,30 --reduction mean --rho-max 700 --certify > "$OUT/fig6_flow.json"
echo "the runs against the NCF flow from w0: $OUT/fig6_flow.json" >&2
run ncfkit plot "$OUT/fig6.h5" -o "$OUT/fig6.png" --run 0 --force
run ncfkit plot "$OUT/fig6_small.h5" -o "$OUT/fig6_small.png" --force
