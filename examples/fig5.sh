#!/usr/bin/env bash
# Figure 5 of the paper: a 2-layer ReLU network (50 hidden, L_h = 2; outside the theory,
# whose results need a locally Lipschitz gradient) trained by GD from small random weights
# on teacher data (100 points of the unit sphere in R^20, a 3-neuron ReLU teacher).
# Claim: the weights become approximately sparse before escape, with more non-zero rows
# than for the square activation, and the small rows/columns (a zero-preserving pattern)
# stay small until the next saddle.
# Runs the paper's δ = 0.01 and δ = 1e-4, 1e-5 (one batch; ReLU at L_h = 2 reaches the NCF
# flow's limit w* only for δ ≲ 3e-4), then examples/relu_flow.py: the NCF flow from the
# same w0, its direction at each run's radius at escape and saddle, and its distance to w*.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 5: teacher data, then GD from δ = 0.01, 1e-4, 1e-5 until the first saddle" >&2
run ncfkit data teacher -o "$OUT/fig5_data.npz" --hidden 3 --act relu --seed 0 --force
run ncfkit escape "$OUT/fig5_data.npz" --hidden 50 --act relu --reduction mean \
    --delta 0.01 --delta 1e-4 --delta 1e-5 --lr 0.02 --max-time 200 \
    --json --out "$OUT/fig5.h5" --force > "$OUT/fig5.json"
echo "measurements: $OUT/fig5.json" >&2
run "$PY" examples/relu_flow.py "$OUT/fig5_data.npz" "$OUT/fig5.h5" --hidden 50 --reduction mean \
    > "$OUT/fig5_flow.json"
echo "the run against the NCF flow from w0: $OUT/fig5_flow.json" >&2
run ncfkit plot "$OUT/fig5.h5" -o "$OUT/fig5.png" --run 0 --force
run ncfkit plot "$OUT/fig5.h5" -o "$OUT/fig5_small.png" --run 1 --force
