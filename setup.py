"""Build the optional compiled gradient/GD kernel (ncfkit._gdkernel, see
src/ncfkit/fastgd.py); everything else is in pyproject.toml. Without a C compiler the
build is skipped and ncfkit falls back to its torch engine (``ncfkit escape --json``
reports the ``engine`` that ran). After editing the C source of an editable install,
run ``pip install -e .`` again to rebuild it."""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-fopenmp-simd"]

setup(ext_modules=[Extension("ncfkit._gdkernel", ["src/ncfkit/_gdkernel.c"],
                             depends=["src/ncfkit/_gdkernel_body.h"],
                             extra_compile_args=args, optional=True)])
