#!/usr/bin/env bash
# Figure 15 of the paper (Appendix G): the Figure-4 experiment (3-layer net, σ(x) = x²,
# hidden 20, 20, teacher data, gradient flow from δ = 0.1) continued past its first
# saddle. Claim: the sparsity of the first saddle (one active neuron per hidden layer) is
# kept until the next saddle. The tool follows the run through two plateaus
# (--until saddles:2; the second is left at t_esc + 12, just before --max-time) and
# reports each one (JSON runs[0].plateaus: loss, ‖∇𝓛‖, λ_min, active neurons, the zero set
# of the previous plateau measured at the next, and the neuron predicted to grow next).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 15: Figure 4 continued through two plateaus" >&2
run ncfkit data teacher -o "$OUT/fig15_data.npz" --hidden 2,2 --act square --seed 0 --force
run ncfkit escape "$OUT/fig15_data.npz" --hidden 20,20 --act square --reduction mean \
    --delta 0.1 --method flow --rtol 1e-8 --max-time 70124721 --until saddles:2 --delta-ref none \
    --json --out "$OUT/fig15.h5" --force > "$OUT/fig15.json"
echo "measurements: $OUT/fig15.json" >&2
run ncfkit plot "$OUT/fig15.h5" -o "$OUT/fig15.png" --force
