#!/usr/bin/env bash
# A δ sweep, one run file per δ (as a cluster job array would make them), gathered with
# `ncfkit collect`: Example 1 (diagonal model, L_h = 2) for δ = 1e-2 … 1e-6.
# Claim (Theorem 4): the escape time grows like ln(1/δ)/(2𝒩(w*)) = ln(1/δ)/16, and the
# trajectory comes closer to the saddle (2, 0) of the reference path as δ shrinks.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }
DELTAS="1e-2 1e-3 1e-4 1e-5 1e-6"
COMMON=(examples/data/example1.npz --arch diag --init examples/data/example1_w0.npz --lr 1e-3)

files=()
for d in $DELTAS; do
    echo "sweep: δ = $d" >&2
    run ncfkit escape "${COMMON[@]}" --delta "$d" --out "$OUT/sweep_$d.h5" --force
    files+=("$OUT/sweep_$d.h5")
done
echo "sweep: one table of all runs" >&2
run ncfkit collect "${files[@]}" --csv > "$OUT/sweep.csv"
run ncfkit collect "${files[@]}" >&2
echo "sweep: all δ in one batched run, for the escape-time fit and the picture" >&2
deltas=()
for d in $DELTAS; do deltas+=(--delta "$d"); done
run ncfkit escape "${COMMON[@]}" "${deltas[@]}" --json --out "$OUT/sweep.h5" --force > "$OUT/sweep.json"
run ncfkit plot "$OUT/sweep.h5" -o "$OUT/sweep.png" --force
