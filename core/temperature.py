"""Closed-loop sampling temperature controller (E3_SPEC section 3), with optional cosine annealing of the target.

The rule, once per training step with the step's measured entropy `H` (nats):

    T <- T * (1 + T * ln(H* / H) / k),   k = ln V + ln ln V

Entropy below the target `H*` raises the temperature, above it lowers it. The first `init_steps` calls only
record `H`; the target is their mean unless given, and with annealing it follows a cosine (`_annealed_target`).

How this departs from the reference code (the E3 authors' verl fork):
- The temperature is clamped to `[min_temperature, max_temperature]` (`_clamp`); the reference has no clamp.
- One global controller fed with the entropy reduced over all data-parallel ranks (global token mean), not one
  controller per rank that lets ranks drift apart. (This module is just the controller; the caller reduces.)
- `enabled=False` keeps T fixed (the GRPO baseline) but still fixes and anneals the target, so runs with and
  without the controller log the same target curve. The reference does nothing when disabled.
- Entropy must be a finite number > 0, else ValueError and nothing changes (zero entropy would make ln(H*/H)
  infinite). The reference also accepts a list (its mean); here the caller passes the mean.
- `init_steps=0` needs an explicit `target_entropy`; annealing needs `max_steps > 0` and an annealing step or more,
  and holds its end past `max_steps`, where the reference's cosine turns back up (`_annealed_target`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import TemperatureConfig

logger = logging.getLogger(__name__)

_STATE_KEYS = ("temperature", "step", "target_entropy", "initial_target_entropy", "init_entropies", "last_clamped")


def _check_positive_finite(name: str, value: float) -> float:
    """Return `value` as float, or raise ValueError naming it unless it is finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value}")
    return value


class TemperatureController:
    """Keeps the policy's entropy near a target by adjusting the sampling temperature (E3_SPEC section 3).

    Call `update(entropy)` once per training step, after the policy update, with that step's global token-mean
    entropy of the tempered distribution; it returns the temperature for the next rollouts.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        initial_temperature: float = 1.0,
        init_steps: int = 1,
        target_entropy: float | None = None,
        enabled: bool = True,
        annealing: bool = False,
        max_steps: int = -1,
        annealing_ratio: float = 0.4,
        annealing_factor: float = 0.9,
        min_temperature: float = 0.05,
        max_temperature: float = 3.0,
    ) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got vocab_size={vocab_size}")
        _check_positive_finite("min_temperature", min_temperature)
        if not min_temperature <= initial_temperature <= max_temperature:
            raise ValueError(
                "temperatures must satisfy min_temperature <= initial_temperature <= max_temperature, got "
                f"{min_temperature} <= {initial_temperature} <= {max_temperature}"
            )
        if init_steps < 0:
            raise ValueError(f"init_steps must be >= 0, got init_steps={init_steps}")
        if target_entropy is not None:
            target_entropy = _check_positive_finite("target_entropy", target_entropy)
        elif init_steps == 0:
            raise ValueError("init_steps=0 leaves no entropy to average: give target_entropy or init_steps >= 1")
        self._annealing_start = max_steps - int(max_steps * annealing_ratio)
        if annealing:
            if max_steps <= 0:
                raise ValueError(f"annealing needs max_steps > 0, got max_steps={max_steps}")
            if not 0.0 < annealing_ratio <= 1.0:
                raise ValueError(f"annealing_ratio must be in (0, 1], got annealing_ratio={annealing_ratio}")
            if not 0.0 <= annealing_factor <= 1.0:
                raise ValueError(f"annealing_factor must be in [0, 1], got annealing_factor={annealing_factor}")
            if self._annealing_start >= max_steps:
                raise ValueError(
                    f"int(max_steps * annealing_ratio) = int({max_steps} * {annealing_ratio}) = 0 annealing steps"
                )
        self._k = math.log(vocab_size) + math.log(math.log(vocab_size))
        self._init_steps = init_steps
        self._enabled = enabled
        self._annealing = annealing
        self._max_steps = max_steps
        self._annealing_factor = annealing_factor
        self._min_temperature = float(min_temperature)
        self._max_temperature = float(max_temperature)
        self._temperature = float(initial_temperature)
        self._step = 1
        self._target = target_entropy
        self._initial_target = target_entropy
        self._init_entropies: list[float] = []
        self._last_clamped = False

    @classmethod
    def from_config(cls, config: TemperatureConfig, vocab_size: int, max_steps: int) -> TemperatureController:
        """A controller set up as `config` says, for a policy of `vocab_size` tokens and a run of `max_steps`
        steps (the annealing schedule's end); the same as passing each field as its keyword. Raises ValueError
        as the constructor does."""
        return cls(
            vocab_size=vocab_size,
            initial_temperature=config.initial,
            init_steps=config.init_steps,
            target_entropy=config.target_entropy,
            enabled=config.enabled,
            annealing=config.annealing,
            max_steps=max_steps,
            annealing_ratio=config.annealing_ratio,
            annealing_factor=config.annealing_factor,
            min_temperature=config.min_temperature,
            max_temperature=config.max_temperature,
        )

    @property
    def temperature(self) -> float:
        """The temperature for the next rollouts."""
        return self._temperature

    @property
    def target_entropy(self) -> float | None:
        """The current target entropy H* in nats (annealed if annealing is on); None until it is fixed."""
        return self._target

    @property
    def initial_target_entropy(self) -> float | None:
        """The target before annealing, H*_0; None until it is fixed."""
        return self._initial_target

    @property
    def step(self) -> int:
        """The number the next `update` call will carry: 1 before the first call, then one more per call."""
        return self._step

    @property
    def k(self) -> float:
        """The gain denominator `ln V + ln ln V`."""
        return self._k

    @property
    def annealing_start_step(self) -> int:
        """The first step `a` at which the target is annealed (meaningful only with annealing on)."""
        return self._annealing_start

    @property
    def last_clamped(self) -> bool:
        """Whether the last `update` hit `min_temperature` or `max_temperature`."""
        return self._last_clamped

    def update(self, entropy: float) -> float:
        """Record one step's entropy (nats, > 0), advance the step counter, and return the next temperature.

        Raises ValueError for NaN, infinite, zero or negative entropy, and then changes no state.
        """
        entropy = _check_positive_finite("entropy", entropy)
        self._last_clamped = False
        if self._step <= self._init_steps:
            self._init_entropies.append(entropy)
        else:
            if self._target is None:
                self._target = sum(self._init_entropies) / len(self._init_entropies)
                self._initial_target = self._target
            if self._enabled:
                self._temperature = self._clamp(self._next_temperature(entropy, self._target))
            if self._annealing and self._step >= self._annealing_start:
                self._target = self._annealed_target(self._initial_target)
        self._step += 1
        return self._temperature

    def _next_temperature(self, entropy: float, target: float) -> float:
        """The unclamped controller rule `T * (1 + T * ln(H* / H) / k)`."""
        t = self._temperature
        return t * (1.0 + t * math.log(target / entropy) / self._k)

    def _clamp(self, temperature: float) -> float:
        """Clamp to the configured range, recording and logging when the clamp is hit.

        The range `[min_temperature, max_temperature]` has wide defaults, 0.05..3.0, that normal runs never reach;
        hitting the clamp is logged as a warning and reported by `last_clamped`. The reference code has no clamp, so
        a bad entropy signal could drive T to zero or below.
        """
        clamped = min(max(temperature, self._min_temperature), self._max_temperature)
        if clamped != temperature:
            self._last_clamped = True
            logger.warning(
                "temperature %.6g at step %d is outside [%g, %g]; clamped to %g",
                temperature,
                self._step,
                self._min_temperature,
                self._max_temperature,
                clamped,
            )
        return clamped

    def _annealed_target(self, initial_target: float) -> float:
        """The cosine-annealed target for the current step (progress capped at 1 past max_steps).

        From step `a = max_steps - int(max_steps * annealing_ratio)` on, the target follows
        `H*_0 * (f + (1 - f) * 0.5 * (1 + cos(pi * progress)))`, and the new target applies from the next step.
        Past `max_steps` the annealing progress stays at 1 (a departure: the reference's cosine would turn back up).
        """
        progress = min((self._step - self._annealing_start) / (self._max_steps - self._annealing_start), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        f = self._annealing_factor
        return initial_target * (f + (1.0 - f) * cosine)

    def state_dict(self) -> dict[str, Any]:
        """Return the controller's changing state as plain Python values (restorable with `load_state_dict`)."""
        return {
            "temperature": self._temperature,
            "step": self._step,
            "target_entropy": self._target,
            "initial_target_entropy": self._initial_target,
            "init_entropies": list(self._init_entropies),
            "last_clamped": self._last_clamped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state saved by `state_dict`; the restored controller gives the same next outputs.

        Raises ValueError when a key is missing or a value is out of range; then nothing changes.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"temperature controller state is missing keys {missing}")
        temperature = float(state["temperature"])
        if not self._min_temperature <= temperature <= self._max_temperature:
            raise ValueError(
                f"saved temperature={temperature} is outside [{self._min_temperature}, {self._max_temperature}]"
            )
        step = int(state["step"])
        if step < 1:
            raise ValueError(f"saved step must be >= 1, got step={step}")
        target, initial = state["target_entropy"], state["initial_target_entropy"]
        if (target is None) != (initial is None):
            raise ValueError(f"saved target_entropy={target} and initial_target_entropy={initial} disagree")
        if target is not None:
            target = _check_positive_finite("target_entropy", target)
            initial = _check_positive_finite("initial_target_entropy", initial)
        entropies = [_check_positive_finite("init_entropies[i]", h) for h in state["init_entropies"]]
        if target is None and step > self._init_steps and not entropies:
            raise ValueError(f"saved state at step={step} has neither a target entropy nor entropies to average")
        self._temperature = temperature
        self._step = step
        self._target = target
        self._initial_target = initial
        self._init_entropies = entropies
        self._last_clamped = bool(state["last_clamped"])

    def __repr__(self) -> str:
        return (
            f"TemperatureController(temperature={self._temperature:.6g}, target_entropy={self._target}, "
            f"step={self._step}, enabled={self._enabled}, annealing={self._annealing})"
        )
