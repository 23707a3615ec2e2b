"""ncfkit: the neural correlation function (NCF) of homogeneous networks, its KKT
points, their sparsity, and gradient-flow escape from small initialization.

The science follows Kumar & Haupt, "Towards Understanding Gradient Flow Dynamics of
Homogeneous Neural Networks Beyond the Origin". Each idea lives in one module:

- :mod:`ncfkit.activations` -- σ(x) = max(x, αx)^p and its grammar (SPEC §1)
- :mod:`ncfkit.losses` -- square / logistic losses and ỹ = −ℓ'(0, y) (eq. 1)
- :mod:`ncfkit.models` -- feed-forward nets (eq. 9) and the diagonal model (Example 1)
- :mod:`ncfkit.ncf` -- the NCF 𝒩(u) = ỹᵀH(X; u) (eq. 3), gradients, Hessian products
- :mod:`ncfkit.kkt` -- KKT points of the constrained NCF (eq. 4, Lemma 20)
- :mod:`ncfkit.sparsity` -- zero-preserving subsets (Def. 15, Lemmas 16-17, Thm 18)
- :mod:`ncfkit.dynamics` -- gradient descent / gradient flow of the training loss
- :mod:`ncfkit.theory` -- the predictions of Theorems 4, 10, 18 and Corollaries 5-12
- :mod:`ncfkit.io` -- every file format (data, results, weights, provenance)

Numerics: :mod:`ncfkit.fastgd` (the compiled gradient kernel and GD engines),
:mod:`ncfkit.flow` (the adaptive gradient-flow integrator), :mod:`ncfkit.arrays` (the
maths on numpy arrays or torch tensors alike) and :mod:`ncfkit._lazy` (torch imported
on first use, so a CPU run on the kernel never pays for it).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
