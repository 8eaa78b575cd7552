"""How many steps (or batches) one tf.function call runs: the host syncs once per call, so calls
must be long enough that its work per call vanishes, and short enough that progress keeps moving."""
from __future__ import annotations

from model.defaults import AUTO_CALL_SECONDS

# Automatic sizes (AUTO_CALL_SECONDS of steps) never exceed this.
MAX_STEPS_PER_CALL = 1000


class CallSizer:
    """The size of the next call: fixed, or (auto) from the measured time per step. A caller does
    not `observe` a call that paid for tracing or for filling an input pipeline."""

    def __init__(self, fixed: int | None = None, seconds: float = AUTO_CALL_SECONDS):
        self.fixed, self.seconds, self.seconds_per_step = fixed, seconds, None

    def size(self, limit: int | None = None) -> int:
        if self.fixed is not None:
            n = self.fixed
        elif self.seconds_per_step is None:
            n = 1
        else:
            n = int(min(MAX_STEPS_PER_CALL, max(1, self.seconds / self.seconds_per_step)))
        return max(1, min(n, limit)) if limit is not None else n

    def observe(self, seconds: float, steps: int) -> None:
        if steps:
            measured = seconds / steps
            self.seconds_per_step = measured if self.seconds_per_step is None else \
                0.5 * self.seconds_per_step + 0.5 * measured
