#!/usr/bin/env bash
# Figure 6 of the paper: a 3-layer ReLU network (hidden 20, 30; L_h = 3) trained by GD
# from small random weights on teacher data from a smaller 3-layer ReLU net (3, 3).
# Claim: rows of W_l and the matching columns of W_{l+1} that are small before escape
# stay small until the next saddle, even for deeper ReLU nets.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 6: teacher data, then GD from δ = 0.1 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig6_data.npz" --hidden 3,3 --act relu --seed 0 --force
run ncfkit escape "$OUT/fig6_data.npz" --hidden 20,30 --act relu --reduction mean \
    --delta 0.1 --lr 0.05 --max-time 600 \
    --json --out "$OUT/fig6.h5" --force > "$OUT/fig6.json"
echo "measurements: $OUT/fig6.json" >&2
run ncfkit plot "$OUT/fig6.h5" -o "$OUT/fig6.png" --force
