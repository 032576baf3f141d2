"""recc's test suite: a package, so that its helpers import as `tests.helpers.<name>`.

pytest (rootdir-based `prepend` import mode) puts the repository root on sys.path for a
test package, and `pythonpath = ["."]` in pyproject.toml does so in every import mode.
Helpers the benchmarks also use live in the installed package `recc.testing` instead.
"""
