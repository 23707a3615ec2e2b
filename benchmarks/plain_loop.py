"""The usual way these experiments are run: an ``nn.Module``, ``torch.optim.SGD``,
``loss.item()`` every step and every iterate kept in memory (issue 6's baseline).

    python benchmarks/plain_loop.py DATA --hidden 50 --act square --delta 0.02 \
        --lr 0.005 --steps 250000 --init w0.npz [--dtype float32] [--save-every 1]

The initial direction is read from a weight file (docs/theory.md §4: W1 … WL, normalised, times δ),
so ncfkit can be started from the very same point with ``--init w0.npz``. Prints one JSON
line: wall time, peak RSS, final loss, and the escape/first-saddle steps found by eye's
stand-in (loss below 99% of its start; the minimum gradient norm after that).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from torch import nn


class Square(nn.Module):
    def forward(self, x):
        return x * x


ACTS = {"square": Square, "relu": nn.ReLU, "linear": nn.Identity, "tanh": nn.Tanh, "gelu": nn.GELU}


def build(d: int, hidden: list[int], act: str, init: dict[str, np.ndarray], delta: float, dtype):
    widths = [d, *hidden, 1]
    layers = []
    for l in range(len(widths) - 1):
        layers.append(nn.Linear(widths[l], widths[l + 1], bias=False))
        if l < len(widths) - 2:
            layers.append(ACTS[act]())
    net = nn.Sequential(*layers).to(dtype)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    flat = np.concatenate([init[f"W{l + 1}"].ravel() for l in range(len(linears))])
    scale = delta / np.linalg.norm(flat)
    with torch.no_grad():
        for l, lin in enumerate(linears):
            lin.weight.copy_(torch.as_tensor(init[f"W{l + 1}"].reshape(lin.weight.shape) * scale))
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--hidden", default="50")
    ap.add_argument("--act", default="square")
    ap.add_argument("--delta", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--steps", type=int, default=250_000)
    ap.add_argument("--init", required=True, help="weight .npz with W1..WL (direction)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--save-final", default=None, help="write the final weights here (.npz)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    z = np.load(args.data)
    X = torch.as_tensor(z["X"], dtype=dtype, device=args.device)
    y = torch.as_tensor(z["y"], dtype=dtype, device=args.device).reshape(-1, 1)
    init = dict(np.load(args.init))
    net = build(X.shape[1], [int(k) for k in args.hidden.split(",")], args.act, init, args.delta, dtype).to(args.device)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()
    losses, iterates = [], []
    for _ in range(args.steps):
        opt.zero_grad()
        loss = loss_fn(net(X), y)
        loss.backward()
        losses.append(loss.item())
        iterates.append([p.detach().clone() for p in net.parameters()])
        opt.step()
    wall = time.perf_counter() - t0

    losses_a = np.asarray(losses)
    below = np.nonzero(losses_a < 0.99 * losses_a[0])[0]
    escape = int(below[0]) if below.size else None
    saddle = None
    if escape is not None:
        # by eye's stand-in, after the loop: the slowest loss change after the escape drop
        # (iterates are all in memory, as in the usual notebook)
        rate = np.abs(np.diff(losses_a[escape:]))
        drop = np.nonzero(rate > 1e-3 * rate.max())[0]
        start = int(drop[-1]) if drop.size else 0
        settled = np.nonzero(rate[: start + 1] < 1e-3 * rate.max())[0]
        saddle = escape + int(settled[0]) if settled.size else None
    if args.save_final:
        np.savez(args.save_final, **{f"W{l + 1}": p.detach().cpu().numpy() for l, p in enumerate(net.parameters())})
    print(json.dumps({
        "method": "plain torch loop", "dtype": args.dtype, "steps": args.steps, "lr": args.lr,
        "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": losses[-1], "escape_step": escape, "escape_time": None if escape is None else escape * args.lr,
        "saddle_step": saddle, "saddle_time": None if saddle is None else saddle * args.lr,
        "saddle_loss": None if saddle is None else losses[saddle],
    }))


if __name__ == "__main__":
    main()
