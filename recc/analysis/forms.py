"""Canonical forms: what the classifier found, as data a lowering consumes.

Stage: analysis. Frozen dataclasses whose coefficient fields are IR
expressions over the step's inputs, params and lets (never the state), so a
backend can emit code for them without re-analysing the spec.

The four classes:
  diagonal   s' = a * s + b per state (elementwise, broadcast by dim name), or
             small k x k blocks coupling k states channel by channel
             (LRU's real/imaginary pair): s_i' = sum_j a_ij * s_j + b_i.
  dplr       S' = S @ (diag(d) + sum_r outer(u_r, w_r)) + b for a matrix
             state S[R, C] (rows R, columns C); rank = number of (u, w) pairs.
  minmax     s' = max(min(s, a), b)      semiring "max-min",
             s' = max(s + a, b)          semiring "max-plus", or
             s' = min(s + a, b)          semiring "min-plus".
  nonlinear  anything else; only the Jacobian's structure is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.ir.nodes import Expr

DIAGONAL, DPLR, MINMAX, NONLINEAR = "diagonal", "dplr", "minmax", "nonlinear"


@dataclass(frozen=True)
class JacobianStructure:
    """Sparsity of d(new state)/d(old state) over all state elements.

    kind: "diagonal" (each element depends on itself only), "block" (states
    coupled channel by channel in groups of `block_size` elements, one from
    each coupled state), or "dense" (coupling along a dim).
    """

    kind: str
    block_size: int = 1
    affine: bool = False  # True if the update is affine in the state

    def describe(self) -> str:
        if self.kind == "block":
            return f"block-diagonal ({self.block_size}x{self.block_size} blocks)"
        return self.kind


@dataclass(frozen=True)
class DiagonalBlock:
    """States updated together: s_i' = sum_j coupling[i][j] * s_j + inject[i].

    With one state, coupling is ((a,),) and this is `s' = a * s + b`. A None
    coefficient is zero. Coefficients broadcast to the state's dims by name.
    """

    states: tuple[str, ...]
    coupling: tuple[tuple[Expr | None, ...], ...]
    inject: tuple[Expr | None, ...]

    @property
    def size(self) -> int:
        return len(self.states)


@dataclass(frozen=True)
class DiagonalForm:
    blocks: tuple[DiagonalBlock, ...]
    kind: str = field(default=DIAGONAL, init=False)

    @property
    def block_size(self) -> int:
        return max(b.size for b in self.blocks)


@dataclass(frozen=True)
class LowRankTerm:
    """outer(S @ u, w): one rank-1 term of the right factor (u, w over columns C)."""

    u: Expr
    w: Expr


@dataclass(frozen=True)
class DplrForm:
    """S' = S * d + sum_r outer(S @ u_r, w_r) + inject  (= S @ (diag(d) + U W^T) + B).

    `transposed`: the form is of S^T, not S (a spec that stores S[K, V] with left
    updates, as flash-linear-attention does: recc.analysis.orientation); then the
    rows and columns above are S's columns and rows."""

    state: str
    decay: Expr | None  # broadcast over the columns C (scalar or [C]); None is 0
    terms: tuple[LowRankTerm, ...]
    inject: Expr | None
    transposed: bool = False
    kind: str = field(default=DPLR, init=False)

    @property
    def rank(self) -> int:
        return len(self.terms)


@dataclass(frozen=True)
class MinMaxForm:
    """Per state: s' = max(min(s, a), b) ("max-min"), max(s + a, b) ("max-plus")
    or min(s + a, b) ("min-plus").

    `coefficients[name] = (a, b)`; a None `b` is -inf (+inf for min-plus), a
    None `a` is +inf (max-min) or 0 (max-plus, min-plus).
    """

    @property
    def lattice(self) -> str:
        """The operator that applies `b`: "min" for min-plus, else "max"."""
        return "min" if self.semiring == "min-plus" else "max"

    @property
    def identity_b(self) -> float:
        """What an absent `b` is: the identity of `lattice`."""
        return float("inf") if self.semiring == "min-plus" else float("-inf")

    semiring: str
    coefficients: dict[str, tuple[Expr | None, Expr | None]] = field(hash=False)
    kind: str = field(default=MINMAX, init=False)


@dataclass(frozen=True)
class NonlinearForm:
    """No linear structure proven: the step is the spec's own update."""

    kind: str = field(default=NONLINEAR, init=False)


CanonicalForm = DiagonalForm | DplrForm | MinMaxForm | NonlinearForm


@dataclass(frozen=True)
class Analysis:
    """Everything the classifier found about one recurrence."""

    kind: str  # DIAGONAL, DPLR, MINMAX or NONLINEAR
    form: CanonicalForm
    jacobian: JacobianStructure
    rank: int = 0  # dplr only
    semiring: str = ""  # minmax only
    reasons: tuple[str, ...] = ()  # why this class, in words, for `recc explain`
    transition: tuple[str, ...] = ()  # simplified per-element transition, printed
