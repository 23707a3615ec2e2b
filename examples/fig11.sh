#!/usr/bin/env bash
# Figure 11 of the paper (Appendix F.2): a 4-layer network v^T tanh(W3 tanh(W2 tanh(W1 x)))
# with W1 20x20, W2 30x20, W3 30x30 (hidden 20, 30, 30), trained by gradient descent from
# small weights on 100 points of the unit sphere in R^20 labelled by a smaller tanh network
# (hidden 2, 2, 2). Claim: the rows and columns that are small before escape stay small
# until the next saddle. tanh is not homogeneous: no NCF theory, every prediction n/a
# (JSON null); the tool measures escape, the plateaus (--until saddles:2) and the neurons
# small at each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 11: 4-layer tanh net, hidden 20, 30, 30, GD from δ = 0.3 through two plateaus" >&2
run ncfkit data teacher -o "$OUT/fig11_data.npz" --hidden 2,2,2 --act tanh --seed 1 --force
run ncfkit escape "$OUT/fig11_data.npz" --hidden 20,30,30 --act tanh --reduction mean \
    --delta 0.3 --lr 0.5 --max-time 25000 --until saddles:2 \
    --json --out "$OUT/fig11.h5" --force > "$OUT/fig11.json"
echo "measurements: $OUT/fig11.json" >&2
run ncfkit plot "$OUT/fig11.h5" -o "$OUT/fig11.png" --force
