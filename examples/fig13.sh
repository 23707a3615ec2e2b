#!/usr/bin/env bash
# Figure 13 of the paper (Appendix F.2): a 3-layer network v^T GELU(W2 GELU(W1 x)) with
# W1 20x20, W2 30x20 (hidden 20, 30), trained by gradient descent from small weights on 100
# points of the unit sphere in R^20 labelled by a smaller GELU network (hidden 2, 2).
# Claim: some rows and columns are small before escape; after escape the sparsity grows.
# GELU is not homogeneous: no NCF theory, every prediction n/a (JSON null); the tool
# measures escape, the plateaus (--until saddles:2; the run ends at --max-time if it finds
# fewer) and the neurons small at each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 13: 3-layer GELU net, hidden 20, 30, GD from δ = 0.1" >&2
run ncfkit data teacher -o "$OUT/fig13_data.npz" --hidden 2,2 --act gelu --seed 1 --force
run ncfkit escape "$OUT/fig13_data.npz" --hidden 20,30 --act gelu --reduction mean \
    --delta 0.1 --lr 0.2 --max-time 8000 --until saddles:2 \
    --json --out "$OUT/fig13.h5" --force > "$OUT/fig13.json"
echo "measurements: $OUT/fig13.json" >&2
run ncfkit plot "$OUT/fig13.h5" -o "$OUT/fig13.png" --force
