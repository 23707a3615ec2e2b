"""``python -m ncfkit``: the same as the ``ncfkit`` command."""

from .cli.main import main

main()
