#!/usr/bin/env bash
# Figure 10 of the paper (Appendix F.2): a 3-layer network v^T tanh(W2 tanh(W1 x)) with
# W1 20x20, W2 30x20 (hidden 20, 30), trained by gradient descent from small weights on 100
# points of the unit sphere in R^20 labelled by a smaller tanh network (hidden 2, 2).
# Claim: the rows and columns that are small before escape stay small until the next
# saddle. tanh is not homogeneous: no NCF theory, every prediction n/a (JSON null); the
# tool measures escape, the plateaus (--until saddles:2) and the neurons small at each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 10: 3-layer tanh net, hidden 20, 30, GD from δ = 0.1 through two plateaus" >&2
run ncfkit data teacher -o "$OUT/fig10_data.npz" --hidden 2,2 --act tanh --seed 1 --force
run ncfkit escape "$OUT/fig10_data.npz" --hidden 20,30 --act tanh --reduction mean \
    --delta 0.1 --lr 0.5 --max-time 8000 --until saddles:2 \
    --json --out "$OUT/fig10.h5" --force > "$OUT/fig10.json"
echo "measurements: $OUT/fig10.json" >&2
run ncfkit plot "$OUT/fig10.h5" -o "$OUT/fig10.png" --force
