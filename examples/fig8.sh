#!/usr/bin/env bash
# Figure 8 of the paper (Appendix F.1): a 4-layer ReLU network (hidden 20, 20, 20;
# L_h = 4) classifying MNIST digits 0 (label -1) and 1 (label +1) at 14x14 with the square
# loss (examples/data/mnist01.npz, 1,000 images, made by examples/data/make_mnist01.py).
# Claim: rows/columns that become small near the origin remain small until the next saddle.
# 1. GD from the paper's δ = 0.3.
# 2. The same run from δ = 0.01, where it follows the NCF flow from w0 to its limit w*.
#    Its plateau near the origin lasts δ^-2·T_b ≈ 10^6 time units (10^7 GD steps), so
#    examples/relu_flow.py integrates the NCF flow from w0 up to radius 0.1 (ψ(t) ≈ δ·u(t/δ²)
#    there, to relative O(0.1^4)) and GD continues from that point (--init, --delta 0.1);
#    fig8_small.json's times are measured from there (relu_flow's time_offset is the rest).
# 3. relu_flow.py: the NCF flow from w0 against both runs at escape and saddle.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
PY="${PYTHON:-python}"
DATA=examples/data/mnist01.npz
NET=(--hidden 20,20,20 --act relu --reduction mean)
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 8: MNIST 0/1 (14x14), GD from δ = 0.3 until the first saddle" >&2
run ncfkit escape "$DATA" "${NET[@]}" --delta 0.3 --lr 0.1 --max-time 1500 \
    --json --out "$OUT/fig8.h5" --force > "$OUT/fig8.json"
echo "measurements: $OUT/fig8.json" >&2

echo "Figure 8 at δ = 0.01: the NCF flow from w0 to radius 0.1, then GD" >&2
run "$PY" examples/relu_flow.py "$DATA" --hidden 20,20,20 --reduction mean --rho-max 3 \
    --start "$OUT/fig8_start.npz" --radius 0.1 --for-delta 0.01 > "$OUT/fig8_start.json"
run ncfkit escape "$DATA" "${NET[@]}" --init "$OUT/fig8_start.npz" --delta 0.1 --lr 0.1 --max-time 800 \
    --json --out "$OUT/fig8_small.h5" --force > "$OUT/fig8_small.json"
echo "measurements: $OUT/fig8_small.json" >&2

run "$PY" examples/relu_flow.py "$DATA" "$OUT/fig8.h5" "$OUT/fig8_small.h5=0.01" --hidden 20,20,20 \
    --reduction mean --rho-max 12 > "$OUT/fig8_flow.json"
echo "the runs against the NCF flow from w0: $OUT/fig8_flow.json" >&2
run ncfkit plot "$OUT/fig8.h5" -o "$OUT/fig8.png" --force
run ncfkit plot "$OUT/fig8_small.h5" -o "$OUT/fig8_small.png" --force
