"""The multiple-choice knapsack every method ends in: one choice per item under a byte budget.

    minimise  sum_i sum_c cost[i, c] x[i, c]
    s.t.      sum_c x[i, c] = 1             for every item i (an expert, or a tensor)
              sum_i sum_c size[i, c] x[i, c] <= capacity
              x[i, c] = 0 where a choice is not allowed
              (optional) per group g: sum_{i in g} sum_c bits[i, c] x[i, c] <= group_cap[g]

solved with pulp (CBC is bundled; HiGHS when installed). Infeasible budgets are detected
before the solver runs: the smallest feasible size is the sum of each item's smallest choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mode_edge.errors import UserError


@dataclass
class Solution:
    choice: np.ndarray  # [n_items] index of the chosen column
    cost: float
    size: int
    status: str
    gap: float | None = None


def min_size(sizes: np.ndarray, allowed: np.ndarray) -> int:
    big = np.where(allowed, sizes, np.iinfo(np.int64).max)
    return int(big.min(axis=1).sum())


def lagrangian(
    cost: np.ndarray, sizes: np.ndarray, capacity: int, allowed: np.ndarray, iters: int = 100
) -> Solution:
    """Large single-budget instances: the multiple-choice knapsack's Lagrangian relaxation.

    For a multiplier lam every item takes argmin(cost + lam*size); bisection finds the
    smallest lam whose choice fits, then the leftover bytes are spent greedily on the upgrades
    with the best cost saved per byte. The dual value max_lam L(lam) equals the LP relaxation,
    a lower bound on the optimum, so the reported gap is a certificate, not an estimate."""
    big = np.where(allowed, cost, np.inf)
    rows = np.arange(cost.shape[0])

    def pick(lam: float) -> np.ndarray:
        return (big + lam * sizes).argmin(axis=1)

    def dual(lam: float) -> float:
        return float((big + lam * sizes).min(axis=1).sum() - lam * capacity)

    lo, hi = 0.0, 1.0
    while sizes[rows, pick(hi)].sum() > capacity:
        hi *= 4.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sizes[rows, pick(mid)].sum() > capacity:
            lo = mid
        else:
            hi = mid
    choice = pick(hi)
    used = int(sizes[rows, choice].sum())
    # greedy fill: best saving per extra byte first, as long as it fits
    cur_cost, cur_size = big[rows, choice], sizes[rows, choice]
    d_size = sizes - cur_size[:, None]
    d_cost = cur_cost[:, None] - big
    ratio = np.where((d_size > 0) & (d_cost > 0) & allowed, d_cost / np.maximum(d_size, 1), 0.0)
    for flat in np.argsort(-ratio, axis=None):
        i, c = divmod(int(flat), cost.shape[1])
        if ratio[i, c] <= 0:
            break
        extra = int(sizes[i, c] - sizes[i, choice[i]])
        if extra > 0 and used + extra <= capacity and big[i, c] < big[i, choice[i]]:
            choice[i], used = c, used + extra
    total = float(cost[rows, choice].sum())
    bound = max(dual(lo), dual(hi))
    return Solution(choice, total, used, "lagrangian", (total - bound) / max(abs(bound), 1e-300))


def _solver(time_limit: float | None, gap: float, threads: int):
    import pulp

    kw = {"msg": False, "gapRel": gap}
    if time_limit is not None:
        kw["timeLimit"] = time_limit
    if "HiGHS" in pulp.listSolvers(onlyAvailable=True):
        return pulp.HiGHS(threads=threads, **kw)
    import warnings

    with warnings.catch_warnings():  # the bundled CBC is what PuLP 3 ships; pyproject pins PuLP < 4
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(threads=threads, **kw)


LAGRANGIAN_ABOVE = 2000  # items; below this CBC solves to optimality in well under a second


def solve(
    cost: np.ndarray,
    sizes: np.ndarray,
    capacity: int,
    allowed: np.ndarray | None = None,
    groups: list[tuple[np.ndarray, float, np.ndarray]] | None = None,
    time_limit: float | None = None,
    gap: float = 1e-4,
    threads: int = 2,
    method: str = "auto",
) -> Solution:
    """cost, sizes: [n_items, n_choices]; groups: (item indices, cap, per-choice weight [n_items, n_choices])."""
    import pulp

    cost = np.asarray(cost, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    allowed = np.ones(cost.shape, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    if not allowed.any(axis=1).all():
        raise ValueError("every item needs at least one allowed choice")
    smallest = min_size(sizes, allowed)
    if smallest > capacity:
        raise UserError(
            f"the budget leaves {capacity:,} bytes for these tensors but the smallest choice "
            f"of every one needs {smallest:,}",
            "raise the budget or allow smaller types",
        )
    # an unconstrained optimum that fits is optimal: skip the solver
    masked = np.where(allowed, cost, np.inf)
    best = masked.argmin(axis=1)
    rows = np.arange(cost.shape[0])
    if sizes[rows, best].sum() <= capacity and not groups:
        return Solution(best, float(cost[rows, best].sum()), int(sizes[rows, best].sum()), "optimal", 0.0)

    if method == "lagrangian" or (method == "auto" and not groups and cost.shape[0] > LAGRANGIAN_ABOVE):
        sol = lagrangian(cost, sizes, capacity, allowed)
        if method == "lagrangian" or sol.gap <= gap or sol.gap <= 1e-3:
            return sol

    # scale costs so CBC's tolerances see numbers of order 1
    scale = float(np.abs(cost[allowed]).max()) or 1.0
    prob = pulp.LpProblem("allocation", pulp.LpMinimize)
    x = {}
    new_var = getattr(prob, "add_variable", None)  # PuLP >= 3.3 attaches variables to the model
    for i, c in zip(*np.nonzero(allowed)):
        name = f"x_{i}_{c}"
        x[i, c] = new_var(name, cat="Binary") if new_var else pulp.LpVariable(name, cat="Binary")
    prob += pulp.lpSum(float(cost[i, c] / scale) * v for (i, c), v in x.items())
    for i in range(cost.shape[0]):
        prob += pulp.lpSum(x[i, c] for c in np.nonzero(allowed[i])[0]) == 1
    prob += pulp.lpSum(int(sizes[i, c]) * v for (i, c), v in x.items()) <= int(capacity)
    for items, cap, weight in groups or []:
        prob += (
            pulp.lpSum(float(weight[i, c]) * x[i, c] for i in items for c in np.nonzero(allowed[i])[0]) <= cap
        )
    prob.solve(_solver(time_limit, gap, threads))
    status = pulp.LpStatus[prob.status]
    if status not in ("Optimal",) and prob.sol_status not in (
        pulp.LpSolutionIntegerFeasible,
        pulp.LpSolutionOptimal,
    ):
        raise UserError(
            f"the allocation problem has no solution ({status})",
            "raise the budget or relax the per-layer constraint",
        )
    choice = np.zeros(cost.shape[0], dtype=np.int64)
    for (i, c), v in x.items():
        if v.value() is not None and v.value() > 0.5:
            choice[i] = c
    return Solution(choice, float(cost[rows, choice].sum()), int(sizes[rows, choice].sum()), status.lower())
