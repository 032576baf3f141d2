"""torch backend: portable parallel algorithms for the scan classes, on any device.

Stage: backend. Runs a plan's scan facts (`recc.lowering.scan.ScanPlan`: its
groups' algebras and slot expressions, its lets, its unread states) with the
IR's evaluator; imports no analysis and never re-analyses a spec.
"""

from recc.backends.torch.scan import run_scan

__all__ = ["run_scan"]
