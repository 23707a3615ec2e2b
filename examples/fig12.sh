#!/usr/bin/env bash
# Figure 12 of the paper (Appendix F.2): a 2-layer network v^T GELU(W1 x), 50 hidden
# neurons, trained by gradient descent from small weights on 100 points of the unit sphere
# in R^20 labelled by a smaller GELU network (2 hidden neurons). Claim: some rows and
# columns are small before escape; after escape the sparsity *grows* (rows that were not
# small become small). GELU is not homogeneous: no NCF theory, every prediction n/a (JSON
# null); the tool measures escape, the plateaus (--until saddles:2; the run ends at
# --max-time if it finds fewer) and the neurons small at each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 12: 2-layer GELU net, 50 hidden, GD from δ = 0.02" >&2
run ncfkit data teacher -o "$OUT/fig12_data.npz" --hidden 2 --act gelu --seed 1 --force
run ncfkit escape "$OUT/fig12_data.npz" --hidden 50 --act gelu --reduction mean \
    --delta 0.02 --lr 0.5 --max-time 8000 --until saddles:2 \
    --json --out "$OUT/fig12.h5" --force > "$OUT/fig12.json"
echo "measurements: $OUT/fig12.json" >&2
run ncfkit plot "$OUT/fig12.h5" -o "$OUT/fig12.png" --force
