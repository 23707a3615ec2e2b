#!/usr/bin/env bash
# Figure 9 of the paper (Appendix F.2): a 2-layer network v^T tanh(W1 x), 50 hidden
# neurons, trained by gradient descent from small weights on 100 points of the unit sphere
# in R^20 labelled by a smaller tanh network (2 hidden neurons). Claim: rows of W1 and
# entries of v that are small before escape stay small until the next saddle, although
# tanh is not homogeneous. There is no NCF theory for tanh, so every prediction is n/a
# (JSON null); the tool still finds escape and the plateaus (--until saddles:2), and the
# neurons small at each (JSON runs[0].plateaus; the figure outlines the neurons small at
# escape, and at plateau 2 those small at plateau 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 9: 2-layer tanh net, 50 hidden, GD from δ = 0.02 through two plateaus" >&2
run ncfkit data teacher -o "$OUT/fig9_data.npz" --hidden 2 --act tanh --seed 1 --force
run ncfkit escape "$OUT/fig9_data.npz" --hidden 50 --act tanh --reduction mean \
    --delta 0.02 --lr 0.5 --max-time 10000 --until saddles:2 \
    --json --out "$OUT/fig9.h5" --force > "$OUT/fig9.json"
echo "measurements: $OUT/fig9.json" >&2
run ncfkit plot "$OUT/fig9.h5" -o "$OUT/fig9.png" --force
