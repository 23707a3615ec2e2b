#!/usr/bin/env bash
# Figure 1 of the paper: a 2-layer network v^T σ(Wx) with σ(x) = x² (L_h = 3), 50 hidden
# neurons, trained by gradient descent (η = 0.005, MSE loss) from small random weights
# (δ = 0.02) on 100 points of the unit sphere in R^20 labelled by a 2-neuron teacher.
# Claim: before escape the weights are sparse (one row of W and one entry of v), and the
# sparsity survives escape up to the next saddle (Theorem 18). The tool finds escape and
# the saddle itself (no hand-picked iterations) and reports ‖ψ_wz‖/‖ψ‖ there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 1: 2-layer square net, 50 hidden, GD from δ = 0.02 until the first saddle" >&2
run ncfkit escape examples/data/fig1_square.npz --hidden 50 --act square --reduction mean \
    --delta 0.02 --lr 0.005 --max-time 1400 \
    --json --out "$OUT/fig1.h5" --force > "$OUT/fig1.json"
echo "measurements: $OUT/fig1.json" >&2
run ncfkit plot "$OUT/fig1.h5" -o "$OUT/fig1.png" --force
