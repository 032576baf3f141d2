"""recc's tie rule for max and min, on tensors: written once, and standalone.

Stage: ir. `max(a, b)` is `a` where a >= b or a is NaN, else `b`: on a tie the
first operand wins and gets the whole gradient (torch.maximum would split it
half and half), and NaN propagates from either side. `min` likewise. The op
table (`recc/ir/ops.py`) runs these, and `recc build` copies this file into
every module it writes (it imports only torch), so a built module's torch
path breaks ties as recc does.
"""

import torch


def max_picks_first(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where max(a, b) is a: a >= b, or a is NaN."""
    return (a >= b) | torch.isnan(a)


def min_picks_first(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where min(a, b) is a: a <= b, or a is NaN."""
    return (a <= b) | torch.isnan(a)


def maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max with recc's tie rule (see `max_picks_first`)."""
    return torch.where(max_picks_first(a, b), a, b)


def minimum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min with recc's tie rule: on a tie the gradient goes to the first operand."""
    return torch.where(min_picks_first(a, b), a, b)
