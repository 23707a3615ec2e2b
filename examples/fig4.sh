#!/usr/bin/env bash
# Figure 4 of the paper: a 3-layer network v^T σ(W2 σ(W1 x)) with σ(x) = x² (hidden 20, 20;
# L_h = 7) from small random weights, on teacher data from a smaller 3-layer square net.
# Claim: before escape one row of W1 and one entry of W2 and of v are non-zero, and this
# sparsity (a zero-preserving subset, Theorem 18) is kept until the next saddle.
# The plateau before escape lasts ~δ^{2-L_h} = δ^{-5}: plain GD would need millions of
# steps here, so this example integrates the gradient flow with adaptive steps
# (--method flow).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 4: teacher data, then the gradient flow from δ = 0.1 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig4_data.npz" --hidden 2,2 --act square --seed 0 --force
run ncfkit escape "$OUT/fig4_data.npz" --hidden 20,20 --act square --reduction mean \
    --delta 0.1 --method flow --rtol 1e-8 --max-time 1e9 \
    --json --out "$OUT/fig4.h5" --force > "$OUT/fig4.json"
echo "measurements: $OUT/fig4.json" >&2
run ncfkit plot "$OUT/fig4.h5" -o "$OUT/fig4.png" --force
