"""The ``ncfkit`` command line: a click group of thin commands over the library."""
