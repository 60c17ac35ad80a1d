"""KL-penalty coefficient controllers (Ziegler et al. 2019, section 2.2)."""

from __future__ import annotations


class FixedKLController:
    """A constant coefficient."""

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, observed_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Moves the coefficient so the observed KL tracks ``target``.

    ``error = clip(KL / target - 1, -0.2, 0.2)``; ``coef *= 1 + error * n_steps / horizon``.
    """

    def __init__(self, coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, observed_kl: float, n_steps: int) -> None:
        error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def build_kl_controller(kind: str, coef: float, target: float, horizon: int):
    """The controller ``algo.kl_controller`` names (validated by ``PPOConfig``)."""
    return AdaptiveKLController(coef, target, horizon) if kind == "adaptive" else FixedKLController(coef)
