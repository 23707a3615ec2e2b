#!/usr/bin/env bash
# Figures 16 and 17 of the paper (Appendix G): the Figure-8 experiment — a 4-layer ReLU
# network (hidden 20, 20, 20; L_h = 4) on MNIST digits 0 (label -1) and 1 (label +1) at
# 14x14 (examples/data/mnist01.npz, made by examples/data/make_mnist01.py), square loss —
# continued past its first saddle. Claim: the rows and columns that are small at the first
# saddle stay small until the next one. The tool follows the run through two plateaus
# (--until saddles:2) and reports each (JSON runs[0].plateaus), with the neurons predicted
# to grow next. ReLU is outside the theory (a kink at 0); the prediction uses the one-sided
# derivative.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figures 16-17: MNIST 0/1 (14x14), GD from δ = 0.3 through two plateaus" >&2
run ncfkit escape examples/data/mnist01.npz --hidden 20,20,20 --act relu --reduction mean \
    --delta 0.3 --lr 0.1 --max-time 1500 --until saddles:2 --delta-ref none \
    --json --out "$OUT/fig16.h5" --force > "$OUT/fig16.json"
echo "measurements: $OUT/fig16.json" >&2
run ncfkit plot "$OUT/fig16.h5" -o "$OUT/fig16.png" --force
