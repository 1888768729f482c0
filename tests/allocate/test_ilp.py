"""The allocation ILP against brute force, and budget parsing (issue 6 groundwork)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mode_edge.allocate.budget import parse_budget
from mode_edge.allocate.ilp import solve
from mode_edge.errors import UserError


def brute_force(cost, sizes, capacity, allowed):
    best, best_choice = np.inf, None
    n, k = cost.shape
    for choice in itertools.product(range(k), repeat=n):
        if not all(allowed[i, c] for i, c in enumerate(choice)):
            continue
        size = sum(sizes[i, c] for i, c in enumerate(choice))
        if size > capacity:
            continue
        total = sum(cost[i, c] for i, c in enumerate(choice))
        if total < best:
            best, best_choice = total, choice
    return best, best_choice


@pytest.mark.parametrize("seed", range(12))
def test_ilp_equals_brute_force_and_respects_budget(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(4, 9)), int(rng.integers(2, 5))
    bits = np.sort(rng.choice([2.06, 2.625, 3.44, 4.5, 5.5, 6.56, 8.5], size=k, replace=False))
    rows = rng.integers(1, 5, size=n) * 4096
    sizes = np.rint(rows[:, None] * bits[None, :] / 8).astype(np.int64)
    # error falls with bits, scaled per item by a random importance
    cost = rng.gamma(1.0, 1.0, size=(n, 1)) * np.exp(-1.3 * bits)[None, :] * rng.uniform(0.8, 1.2, (n, k))
    allowed = rng.random((n, k)) > 0.15
    allowed[np.arange(n), rng.integers(0, k, n)] = True
    lo = int(np.where(allowed, sizes, 10**12).min(1).sum())
    hi = int(np.where(allowed, sizes, 0).max(1).sum())
    capacity = int(rng.uniform(lo, hi))
    sol = solve(cost, sizes, capacity, allowed)
    ref, _ = brute_force(cost, sizes, capacity, allowed)
    assert sol.size <= capacity
    assert all(allowed[i, c] for i, c in enumerate(sol.choice))
    assert sol.cost == pytest.approx(ref, rel=1e-6)


def test_unlimited_budget_gives_every_item_its_best_choice():
    rng = np.random.default_rng(0)
    cost = rng.random((10, 4))
    sizes = rng.integers(1, 100, (10, 4))
    sol = solve(cost, sizes, 10**9)
    assert (sol.choice == cost.argmin(1)).all()


def test_infeasible_budget_names_the_smallest_size():
    sizes = np.array([[10, 20], [30, 40]])
    with pytest.raises(UserError, match="needs 40"):
        solve(np.ones((2, 2)), sizes, 39)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12GB", 12 * 10**9),
        ("12GiB", 12 * 2**30),
        ("1.5 gb", 1_500_000_000),
        ("800MiB", 800 * 2**20),
        ("123456", 123456),
    ],
)
def test_budget_bytes(text, expected):
    assert parse_budget(text).bytes == expected


def test_budget_bpw_and_errors():
    assert parse_budget("3.5bpw").bpw == 3.5
    for bad in ("twelve", "12XB", "0GB", "0.5bpw"):
        with pytest.raises(UserError):
            parse_budget(bad)


def test_lagrangian_is_feasible_and_certifies_a_small_gap():
    """At scale the Lagrangian path is used; its gap is against the LP bound, so it is a proof."""
    from mode_edge.allocate.ilp import lagrangian

    rng = np.random.default_rng(3)
    n, bits = 5000, np.array([2.06, 2.625, 3.44, 4.5, 5.5, 6.56, 8.5])
    sizes = np.rint(65536 * bits / 8).astype(np.int64)[None, :].repeat(n, 0)
    cost = (
        (rng.pareto(1.5, (n, 1)) + 0.01)
        * np.exp(-1.4 * bits)[None, :]
        * rng.uniform(0.9, 1.1, (n, len(bits)))
    )
    capacity = int(n * 65536 * 3.2 / 8)
    sol = lagrangian(cost, sizes, capacity, np.ones(cost.shape, bool))
    assert sol.size <= capacity
    assert 0 <= sol.gap <= 1e-3
    # and it is at least as good as CBC's answer within that gap on a slice small enough for CBC
    small = slice(0, 300)
    cap_small = int(300 * 65536 * 3.2 / 8)
    exact = solve(cost[small], sizes[small], cap_small, method="cbc")
    approx = lagrangian(cost[small], sizes[small], cap_small, np.ones((300, len(bits)), bool))
    assert approx.size <= cap_small and approx.cost <= exact.cost * (1 + approx.gap) + 1e-12
