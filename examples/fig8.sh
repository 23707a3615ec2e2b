#!/usr/bin/env bash
# Figure 8 of the paper (Appendix F.1): a 4-layer ReLU network (hidden 20, 20, 20;
# L_h = 4) classifying digits 0 (label -1) and 1 (label +1) with the square loss; the
# shipped examples/data/digits01.npz holds the data (examples/data/make_digits.py says how
# it was made). Claim: rows/columns that become small near the origin remain small until
# the next saddle.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 8: digits 0/1, GD from δ = 0.3 until the first saddle" >&2
run ncfkit escape examples/data/digits01.npz --hidden 20,20,20 --act relu --reduction mean \
    --delta 0.3 --lr 0.1 --max-time 1500 \
    --json --out "$OUT/fig8.h5" --force > "$OUT/fig8.json"
echo "measurements: $OUT/fig8.json" >&2
run ncfkit plot "$OUT/fig8.h5" -o "$OUT/fig8.png" --force
