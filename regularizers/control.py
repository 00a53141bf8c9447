"""A cost target in one run: the regularizer's strength adapted during training.

Picking a strength by hand means a sweep (morph-net issues #103, #105, #146: which strength
reaches my budget?). With ``target=`` (a fraction of the seed's cost) or ``budget=`` (an
absolute cost in the resource's unit) the regularizer owns its strength and
:class:`StrengthController` moves it every ``every`` steps from the alive cost the regularizer
already computes, on the log of the strength::

    log s <- log s + g * clip(log(cost / budget) + lead * trend, -max_error, max_error)

``trend`` is a moving average of the change of log cost per update; ``g`` is ``gain`` above
the budget and ``gain * fall`` below it. The first term is an integral controller: the
strength grows while the alive cost is above the budget. The second is a lead: once channels
die fast enough to reach the budget within about ``lead`` updates, the strength stops growing
(or shrinks), because the channels already on their way out would otherwise overshoot.
Below the budget the strength falls fast: a channel that died rarely comes back (on digits
and Fashion-MNIST, lowering the strength 10- to 50-fold after an overshoot revived few), so an
overshoot stays.

The optimizer's delay: a channel dies only once its scale has travelled to the threshold
(with Adam about |gamma| / lr steps, since Adam's step is ~lr whatever the gradient). During
that delay the alive cost does not move and the strength grows by at most
``exp(gain * max_error)`` per update; the lead brakes as soon as the cost starts to fall.
A higher learning rate on the bn scales shortens the delay (bench/bench_strength_target.py).

Everything here is plain numbers: every rank of a DDP/FSDP job sees the same gammas (equal
parameters; FSDP2's are gathered), so the same alive cost and the same strength, with no
communication. The framework halves keep the strength in a tensor / variable updated in
place, so a compiled step reads the new value without being traced again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from morphscope.errors import MorphScopeError

DEFAULT_ADAPT_EVERY = 10  # steps between strength updates
DEFAULT_GAIN = 0.2
DEFAULT_LEAD = 15.0  # updates ahead the cost's fall is counted (the derivative term)
DEFAULT_FALL = 5.0  # below the budget, the strength falls this many times faster than it rises
SMOOTHING = 0.2  # weight of the newest change of log cost in the trend (a moving average)
MAX_ERROR = 0.5  # |log(cost / budget)| counted at most: the step is at most gain * MAX_ERROR
INITIAL_PENALTY = 0.1  # the starting strength makes strength * G(seed) this much of a unit loss
# The strength stays below this multiple of the one that makes strength * G(seed) a unit loss:
# far beyond it the task loss no longer counts and every channel dies at once (a latency
# profile on Fashion-MNIST: the strength rose ~9,000-fold while the cost fell slowly, then the
# whole network died within 100 steps).
MAX_PENALTY = 100.0


def check_strength(strength: float) -> float:
    """``strength`` as a float, refused in one line unless finite and above zero."""
    if not (math.isfinite(strength) and strength > 0.0):
        raise MorphScopeError(f"strength={strength}: must be above zero")
    return float(strength)


@dataclass
class StrengthController:
    """The strength of one regularizer and the budget it is steered to.

    Attributes
    ----------
    budget : float
        The alive cost to reach, in the resource's unit (FLOPs, parameters, bytes, seconds).
    seed_cost : float
        The seed's cost (for the fraction shown in logs).
    log_strength : float
        Natural log of the current strength.
    every : int
        Steps between updates (:meth:`due`).
    gain : float
        Log-strength change per unit of log error.
    """

    budget: float
    seed_cost: float
    log_strength: float
    every: int = DEFAULT_ADAPT_EVERY
    gain: float = DEFAULT_GAIN
    lead: float = DEFAULT_LEAD
    fall: float = DEFAULT_FALL
    max_log_strength: float = math.inf
    last_step: int | None = None
    last_cost: float | None = None
    trend: float = 0.0

    @classmethod
    def for_target(cls, seed_cost: float, seed_penalty: float, target: float | None = None,
                   budget: float | None = None, strength: float | None = None,
                   every: int = DEFAULT_ADAPT_EVERY, gain: float = DEFAULT_GAIN) -> "StrengthController":
        """A controller for ``target`` (fraction of ``seed_cost``, in (0, 1]) or ``budget``
        (absolute), exactly one. The first strength is ``strength`` where given, else the
        one making ``strength * seed_penalty`` (G at the seed's gammas) equal to
        ``INITIAL_PENALTY``; the strength never exceeds the one making it ``MAX_PENALTY``.

        Raises
        ------
        MorphScopeError
            For both or neither of target and budget, a target outside (0, 1], a budget
            not above zero, a strength not above zero, or ``every`` below 1.
        """
        if (target is None) == (budget is None):
            raise MorphScopeError("give target= (a fraction of the seed's cost) or budget= (an "
                                  "absolute cost), not both")
        if target is not None and not 0.0 < target <= 1.0:
            raise MorphScopeError(f"target={target}: a fraction of the seed's cost, in (0, 1]")
        budget = seed_cost * target if target is not None else budget
        if not (math.isfinite(budget) and budget > 0.0):
            raise MorphScopeError(f"budget={budget}: must be a cost above zero")
        unit = 1.0 / seed_penalty if seed_penalty > 0.0 else 1.0  # strength * G(seed) = 1
        strength = check_strength(INITIAL_PENALTY * unit if strength is None else strength)
        if int(every) != every or every < 1:
            raise MorphScopeError(f"adapt_every={every}: a whole number of steps, at least 1")
        return cls(float(budget), float(seed_cost), math.log(strength), int(every), float(gain),
                   max_log_strength=math.log(max(MAX_PENALTY * unit, strength)))

    @property
    def strength(self) -> float:
        return math.exp(self.log_strength)

    def due(self, step: int) -> bool:
        """Whether ``step`` is an update step not yet taken (a logger and a callback may
        both ask at one step)."""
        return step % self.every == 0 and step != self.last_step

    def update(self, cost: float, step: int) -> float:
        """Move the strength at ``step`` for the alive ``cost`` now; the new strength."""
        log_cost = math.log(max(cost, 1e-300))
        error = log_cost - math.log(self.budget)
        if self.last_cost is not None:  # the lead: the smoothed fall per update, ``lead`` times
            change = log_cost - math.log(max(self.last_cost, 1e-300))
            self.trend += SMOOTHING * (change - self.trend)
        self.last_step, self.last_cost = step, cost
        gain = self.gain * (self.fall if error < 0.0 else 1.0)
        self.log_strength += gain * max(-MAX_ERROR, min(MAX_ERROR, error + self.lead * self.trend))
        self.log_strength = min(self.log_strength, self.max_log_strength)
        return self.strength
