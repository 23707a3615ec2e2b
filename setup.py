"""Build the optional compiled GD kernel (ncfkit._gdkernel); everything else is in
pyproject.toml. Without a C compiler the build is skipped and ncfkit falls back to its
torch GD engine (``ncfkit info --engines`` says which one runs)."""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-fopenmp-simd"]

setup(ext_modules=[Extension("ncfkit._gdkernel", ["src/ncfkit/_gdkernel.c"],
                             depends=["src/ncfkit/_gdkernel_body.h"],
                             extra_compile_args=args, optional=True)])
