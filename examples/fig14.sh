#!/usr/bin/env bash
# Figure 14 of the paper (Appendix G): the Figure-1 experiment (2-layer square net, 50
# hidden, GD η = 0.005, MSE loss, δ = 0.02) continued past its first saddle. Claim: the
# sparsity of the first saddle (one active neuron) is kept until the next saddle; only the
# neurons the next escape recruits leave the zero set. The tool follows the run through
# two plateaus (--until saddles:2; here the second is the global minimum, where the run
# converges) and stores each saddle (snapshots saddle, saddle_2 in the run file);
# ncfkit.phases predicts, at the first saddle, which zero neuron grows next and when.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 14: Figure 1 continued through two plateaus" >&2
run ncfkit escape examples/data/fig1_square.npz --hidden 50 --act square --reduction mean \
    --delta 0.02 --lr 0.005 --max-time 6000 --until saddles:2 --delta-ref none \
    --json --out "$OUT/fig14.h5" --force > "$OUT/fig14.json"
echo "measurements: $OUT/fig14.json" >&2
run ncfkit plot "$OUT/fig14.h5" -o "$OUT/fig14.png" --force
