"""Workflows: what the commands do, as library calls that return result objects.

:mod:`.predict`, :mod:`.train`, :mod:`.evaluate`, :mod:`.stress` and :mod:`.demo` check
their options, lay out their outputs and run the engine; none of them prints (the CLI
prints their tables and progress).
"""
