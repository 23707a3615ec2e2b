#!/usr/bin/env bash
# Figure 2 of the paper (Example 1, Section 3.1): the diagonal model H(x; w) = w1²x1 + w2²x2
# on X = I, y = (4, 1), square loss, started at δ·(1, 1)/√2 for δ ∈ {0.1, 0.05, 0.001}.
# The runs escape along w* = (1, 0), follow the reference path p(t) to the saddle (2, 0)
# and leave it for the minimum (2, 1); the smaller δ, the closer to p(t) and to (2, 0).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 2: Example 1, gradient descent (η = 1e-3) to t = 3 for three δ, with the" \
     "reference path p(t) from δ_ref·w*" >&2
run ncfkit escape examples/data/example1.npz --arch diag --init examples/data/example1_w0.npz \
    --delta 0.1 --delta 0.05 --delta 0.001 --lr 1e-3 --max-time 3 --until max-time \
    --json --out "$OUT/fig2.h5" --force > "$OUT/fig2.json"
echo "measurements: $OUT/fig2.json" >&2
run ncfkit plot "$OUT/fig2.h5" -o "$OUT/fig2.png" --force
