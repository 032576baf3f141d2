"""What only the tests use: hypothesis settings profiles and hand-written Triton kernels
(Triton reads a kernel's source from its file, so they cannot live inside a test function).

Shared with the benchmarks or `recc check`, and so in the installed package instead:
recc.testing (agree, regimes, strategies, fuzz, triton_interpreter, triton_traffic).
"""
