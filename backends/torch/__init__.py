"""torch backend: portable parallel algorithms for the scan classes, on any device.

Stage: backend. Consumes the canonical forms of `recc.analysis` (diagonal and
MinMax) and the IR's evaluator; never re-analyses a spec.
"""

from recc.backends.torch.scan import run_scan, supports

__all__ = ["run_scan", "supports"]
