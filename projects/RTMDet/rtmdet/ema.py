"""mmdetection's ExpMomentumEMA momentum schedule, as a ``momentum_fn`` for
:class:`d2lite.modeling.ema.ModelEMA` (``ema = (1 - m) * ema + m * param``)."""

import math

__all__ = ["ExpMomentum"]


class ExpMomentum:
    """``m(step) = (1 - momentum) * exp(-(1 + step) / gamma) + momentum``.

    Large early (m(0) = 0.9998 * exp(-1/2000) + 0.0002 = 0.99950022) so the EMA
    follows the fast-changing weights, then anneals to ``momentum``.
    mmdetection's RTMDet uses momentum 0.0002, gamma 2000, with BN buffers averaged
    too (``update_buffers=True``).

    Args:
        momentum: final momentum. Defaults to 0.0002.
        gamma: decay length in steps, > 0. Defaults to 2000.
    """

    def __init__(self, momentum: float = 0.0002, gamma: float = 2000) -> None:
        if gamma <= 0:
            raise ValueError(f"ExpMomentum: gamma must be > 0, got {gamma}.")
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"ExpMomentum: momentum must be in (0, 1), got {momentum}.")
        self.momentum = momentum
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        """Momentum of update number ``step`` (mmengine's ``steps``: 0 = first update)."""
        return (1 - self.momentum) * math.exp(-float(1 + step) / self.gamma) + self.momentum

    def __repr__(self) -> str:
        return f"ExpMomentum(momentum={self.momentum}, gamma={self.gamma})"
