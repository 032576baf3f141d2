"""Checking executors against the interpreter, and the instruments the tests and benchmarks share.

Stage: top level. May import every stage; nothing in recc's runtime imports it but
`recc check` (`recc.verify`), which uses `agree` and `regimes` only.

  agree               the one comparison with the interpreter (values, final states, gradients)
  regimes             input regimes a class admits (ties, zeros, huge and tiny values, ...)
  strategies, fuzz    hypothesis strategies for spec texts, and the fuzz campaign
                      (benchmarks/fuzz.py, tests/test_fuzz.py); they import hypothesis,
                      a test extra
  triton_interpreter  a vectorised scan for Triton's CPU interpreter (a monkeypatch)
  triton_traffic      a byte counter for kernels under Triton's CPU interpreter (a monkeypatch)

The last two patch private classes of Triton: tests and benchmarks only.
"""
