"""Largest stable step of heavy-ball SGD with a k-step-old gradient, on one quadratic direction.

For curvature h, delayed heavy ball is the linear recursion (a = lr * h)

    v_{t+1} = mu v_t + h w'_{t-k},   w_{t+1} = w_t - lr (A v_{t+1} + B h w'_{t-k})

where w'_{t-k} is the point the gradient was taken at: w_{t-k}, or with weight
prediction w_{t-k} + k (w_{t-k} - w_{t-k-1}) (the last update repeated k times).
A = 1, B = 0 is plain heavy ball; spike compensation uses A = mu^k and
B = 1 + mu + ... + mu^(k-1). It is stable when every eigenvalue of its
transition matrix lies inside the unit circle. This prints, for the tables in
docs/convergence.md, the largest stable a found by bisection, and for the
``strategy.compensation`` rules at the study's mu = 0.9 how many steps a flat
direction of small curvature (a = 0.001) needs to shrink by e: its speed of learning.

    .venv/bin/python scripts/delay_stability.py
"""
from __future__ import annotations

import numpy as np

from asyncsgd.strategies.compensation import explicit_momentum, momentum_rule_lr_scale, spike_coefficients


def transition(a: float, mu: float, k: int, predict: bool = False, spike: bool = False) -> np.ndarray:
    """The matrix that maps (w_t .. w_{t-k-1}, v_t / h) to the next such state."""
    n = k + 3
    big_a, big_b = spike_coefficients(mu, k) if spike else (1.0, 0.0)

    def step(x: np.ndarray) -> np.ndarray:
        w, v = x[:k + 2], x[k + 2]
        at = w[k] + (k * (w[k] - w[k + 1]) if predict else 0.0)
        v_next = mu * v + at
        w_next = w[0] - a * (big_a * v_next + big_b * at)
        return np.concatenate([[w_next], w[:-1], [v_next]])

    return np.stack([step(e) for e in np.eye(n)], axis=1)


def spectral_radius(a: float, mu: float, k: int, **rule) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(transition(a, mu, k, **rule)))))


def largest_stable_step(mu: float, k: int, **rule) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spectral_radius(mid, mu, k, **rule) < 1.0 else (lo, mid)
    return lo


def rules_at(mu: float, k: int):
    """(name, mu, lr factor, rule flags) of the compensation rules, as asyncsgd applies them."""
    lowered = explicit_momentum(mu, k)
    return [("none", mu, 1.0, {}),
            ("momentum as it was (lr unchanged)", lowered, 1.0, {}),
            ("momentum", lowered, momentum_rule_lr_scale(mu, k), {}),
            ("lr", mu, 1.0 / max(k, 1), {}),
            ("predict", mu, 1.0, {"predict": True}),
            ("spike", mu, 1.0, {"spike": True}),
            ("spike+predict", mu, 1.0, {"spike": True, "predict": True}),
            ("lr+spike+predict", mu, 1.0 / max(k, 1), {"spike": True, "predict": True})]


def main() -> None:
    momenta = (0.9, 0.6, 0.4, 0.0)
    print("largest stable lr*h (effective step lr*h/(1-mu) in parentheses)")
    print("| | " + " | ".join(f"mu = {mu}" for mu in momenta) + " |")
    print("|---" * (len(momenta) + 1) + "|")
    for k, predict in ((0, False), (1, False), (2, False), (4, False), (1, True), (2, True), (4, True)):
        limits = [largest_stable_step(mu, k, predict=predict) for mu in momenta]
        cells = [f"{limit:.3g} ({limit / (1 - mu):.3g})" for limit, mu in zip(limits, momenta)]
        print(f"| k = {k}{' + predict' if predict else ''} | " + " | ".join(cells) + " |")

    mu = 0.9
    print(f"\nthe rules at mu = {mu}: largest stable lr*h, lr the one asked for (sync: "
          f"{largest_stable_step(mu, 0):.3g}), and steps per e-fold of a direction of small curvature, lr*h = 0.001 (sync: "
          f"{-1 / np.log(spectral_radius(0.001, mu, 0)):.0f})")
    print("| rule | k = 1 | k = 2 | k = 4 |")
    print("|---|---|---|---|")
    for i, (name, *_rest) in enumerate(rules_at(mu, 1)):
        cells = []
        for k in (1, 2, 4):
            _, rule_mu, scale, flags = rules_at(mu, k)[i]
            limit = largest_stable_step(rule_mu, k, **flags) / scale
            slow = -1 / np.log(spectral_radius(0.001 * scale, rule_mu, k, **flags))
            cells.append(f"{limit:.3g}, {slow:.0f} steps")
        print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
