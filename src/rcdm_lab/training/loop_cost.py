"""What a callback that works inside the training loop costs the loop, said once in the user's terms.

A callback that samples every N steps (preview grids, faithfulness) stops the optimisation while it runs. Its
seconds alone do not tell a user whether N is too small; its share of the training time at the current speed does,
so each such callback reports that share after its first call, with one shared wording.
"""

from __future__ import annotations

import time

from lightning.pytorch.utilities import rank_zero_info


class LoopCost:
    """Seconds each call of `what` held the training loop (`blocked_seconds`), and one line after the first.

    `start(step)` marks when training (re)started, so the line compares the first call against the training time
    of one interval of `every_n_steps` measured since then, excluding the call itself.
    """

    def __init__(self, what: str, every_n_steps: int) -> None:
        self.what = what
        self.every_n_steps = every_n_steps
        self.blocked_seconds: list[float] = []   # read by benchmarks; one entry per call
        self._start: tuple[float, int] | None = None   # (perf_counter, global_step) when training started

    def start(self, step: int) -> None:
        self._start = (time.perf_counter(), step)

    def record(self, blocked: float, step: int) -> None:
        """Keep `blocked` seconds of the call at `step`; after the first call, print its share of training time."""
        self.blocked_seconds.append(blocked)
        if len(self.blocked_seconds) != 1 or self._start is None:
            return
        start_time, start_step = self._start
        steps = step - start_step
        if steps <= 0:
            return
        per_interval = (time.perf_counter() - start_time - blocked) / steps * self.every_n_steps
        rank_zero_info(f"{self.what}: {blocked:.1f} s of the training loop every {self.every_n_steps} steps "
                       f"({100 * blocked / (blocked + per_interval):.1f}% of training time at the current speed)")
