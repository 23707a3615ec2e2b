"""Make examples/data/digits01.npz: digits 0 vs 1 from scikit-learn's bundled copy of
the UCI optical digits (8x8 images, no download), labels -1 (digit 0) and +1 (digit 1),
pixels scaled to [0, 1]. The paper's Figure 8 uses MNIST 0 vs 1 at 14x14; this is the
same task on a data set that ships with a package. Run once; the .npz is committed."""

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
keep = digits.target <= 1
X = digits.data[keep] / 16.0
y = np.where(digits.target[keep] == 0, -1.0, 1.0)
np.savez("examples/data/digits01.npz", X=X, y=y)
print(f"digits01.npz: X {X.shape}, {int((y > 0).sum())} ones, {int((y < 0).sum())} zeros")
