"""The optional compiled kernel was built where the build must have had a C compiler.

ncfkit runs without ``ncfkit._gdkernel`` (the torch engine takes over), so nothing else
notices a silent build failure; CI sets NCFKIT_REQUIRE_KERNEL=1 to make it one."""

import os

import pytest

from ncfkit import fastgd


@pytest.mark.skipif(not os.environ.get("NCFKIT_REQUIRE_KERNEL"),
                    reason="only where the build must have a C compiler (CI sets NCFKIT_REQUIRE_KERNEL)")
def test_kernel_was_built_where_required():
    assert fastgd.compiled_available(), "pip install built no ncfkit._gdkernel: is gcc missing?"
