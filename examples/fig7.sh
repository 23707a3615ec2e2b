#!/usr/bin/env bash
# Figure 7 of the paper (Appendix F.1): a 4-layer ReLU network (hidden 20, 20, 20;
# L_h = 4) trained by GD from small random weights on teacher data from a smaller 4-layer
# ReLU net (3, 3, 3). Claim: rows/columns that become small near the origin remain small
# until the next saddle, and they follow the zero-preserving pattern.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 7: teacher data, then GD from δ = 0.2 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig7_data.npz" --hidden 3,3,3 --act relu --seed 0 --force
run ncfkit escape "$OUT/fig7_data.npz" --hidden 20,20,20 --act relu --reduction mean \
    --delta 0.2 --lr 0.05 --max-time 2000 \
    --json --out "$OUT/fig7.h5" --force > "$OUT/fig7.json"
echo "measurements: $OUT/fig7.json" >&2
run ncfkit plot "$OUT/fig7.h5" -o "$OUT/fig7.png" --force
