"""Largest stable step of heavy-ball SGD with a k-step-old gradient, on one quadratic direction.

For curvature h, delayed heavy ball is the linear recursion

    w_{t+1} = w_t + mu (w_t - w_{t-1}) - a (w_{t-k} + p k (w_{t-k} - w_{t-k-1})),   a = lr * h

(p = 1 with weight prediction: the gradient taken at the weights extrapolated k
steps ahead from the last update). It is stable when every eigenvalue of its
companion matrix lies inside the unit circle; this prints the largest stable a
found by bisection, for the table in docs/convergence.md:

    .venv/bin/python scripts/delay_stability.py
"""
from __future__ import annotations

import numpy as np


def stable(a: float, mu: float, k: int, predict: bool = False) -> bool:
    n = k + 2  # the recursion reads w_t ... w_{t-k-1}
    p = float(predict)
    row = np.zeros(n)
    row[0] += 1 + mu
    row[1] -= mu
    row[k] -= a * (1 + p * k)
    row[k + 1] += a * p * k
    companion = np.zeros((n, n))
    companion[0] = row
    companion[1:, :-1] = np.eye(n - 1)
    return bool(np.max(np.abs(np.linalg.eigvals(companion))) < 1.0)


def largest_stable_step(mu: float, k: int, predict: bool = False) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stable(mid, mu, k, predict) else (lo, mid)
    return lo


def main() -> None:
    momenta = (0.9, 0.6, 0.4, 0.0)
    print("largest stable lr*h (effective step lr*h/(1-mu) in parentheses)")
    print("| | " + " | ".join(f"mu = {mu}" for mu in momenta) + " |")
    print("|---" * (len(momenta) + 1) + "|")
    for k, predict in ((0, False), (1, False), (2, False), (4, False), (1, True), (2, True), (4, True)):
        cells = [f"{largest_stable_step(mu, k, predict):.3g} ({largest_stable_step(mu, k, predict) / (1 - mu):.3g})"
                 for mu in momenta]
        print(f"| k = {k}{' + predict' if predict else ''} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
