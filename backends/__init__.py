"""Code-generating backends (`recc.backends`): one package per target.

Stage: after lowering. A backend consumes only the canonical forms and plans
that `recc.analysis` and `recc.lowering` produced; it never re-analyses a spec.
The reference semantics (`recc.interpreter`) is the only executor so far; the
scan (Triton, torch) backends are the next work item.
"""
