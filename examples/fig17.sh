#!/usr/bin/env bash
# Figure 17 of the paper (Appendix G): the first-layer weights W1 (20x196) of the
# Figure-16 run (4-layer ReLU 20-20-20 on MNIST 0/1 at 14x14, through two plateaus), which
# the paper draws apart from Figure 16 for space. The same picture here: `ncfkit plot
# --layers 1` of fig16's run file, |W1| at init, escape and each plateau's saddle, the
# zero-preserving subset w_z hatched and the neurons small at the previous plateau
# outlined. When fig16's run file is missing (run files are not committed) it reruns
# fig16.sh's escape command to make it (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${NCFKIT_EXAMPLES_OUT:-examples/out}"
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

echo "Figure 17: layer 1 of the Figure-16 run" >&2
if [ ! -f "$OUT/fig16.h5" ]; then
    echo "$OUT/fig16.h5 is missing: rerunning the Figure-16 escape (as in examples/fig16.sh)" >&2
    run ncfkit escape examples/data/mnist01.npz --hidden 20,20,20 --act relu --reduction mean \
        --delta 0.3 --lr 0.1 --max-time 1500 --until saddles:2 --delta-ref none \
        --out "$OUT/fig16.h5" --force > /dev/null
fi
run ncfkit plot "$OUT/fig16.h5" -o "$OUT/fig17.png" --layers 1 --force
