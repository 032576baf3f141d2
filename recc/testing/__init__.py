"""Checking executors against the interpreter: input regimes and one comparison.

Stage: top level. Used by `recc check` (`recc.verify`), the test suite and
`benchmarks/fuzz.py`. May import every stage; nothing imports it but those.
"""
