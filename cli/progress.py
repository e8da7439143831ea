"""Live progress on a terminal: one bar per generation, redrawn in place as its steps run.

    gen 3 [########------------]  4/9 steps  evaluate 0..8  ETA 6 s

It is erased before each permanent line (the per-generation summary, which stays), so a terminal
shows the summaries with the bar of the generation under way below them. Where stderr is not a
terminal (pods, CI logs, pipes) there is no bar: only the plain lines.
"""

import sys
import time
from typing import TextIO

from esgd.core.plan import Phase, Step

WIDTH = 20


class Bar:
    def __init__(self, stream: TextIO | None = None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.shown = False
        self.began: float | None = None  # when the phase under way began
        self.phase: Phase | None = None
        self.last: float | None = None  # how long the previous generation took

    def line(self, text: str) -> None:
        """A permanent progress line, printed where the bar was."""
        self._erase()
        print(text, file=self.stream, flush=True)

    def step(self, phase: Phase, step: Step, done: int, total: int) -> None:
        """`step` of `phase` starts, `done` of its `total` steps done."""
        now = self.clock()
        if phase is not self.phase:
            if self.phase is not None and self.phase.generation is not None and self.began is not None:
                self.last = now - self.began
            self.phase, self.began = phase, now
        if not self.live:
            return
        filled = WIDTH * done // max(total, 1)
        what = " ".join([step.command, *(f"{r[0]}..{r[1]}" for r in (step.members, step.offspring) if r is not None)])
        bar = f"[{'#' * filled}{'-' * (WIDTH - filled)}]"
        self._erase()
        self.stream.write(f"{self._name(phase)} {bar} {done:>2}/{total} steps  {what}{self._eta(now, done, total)}")
        self.stream.flush()
        self.shown = True

    def _name(self, phase: Phase) -> str:
        return phase.name if phase.generation is None else f"gen {phase.generation}"

    def _eta(self, now: float, done: int, total: int) -> str:
        elapsed = now - (self.began or now)
        if self.last is not None and self.phase is not None and self.phase.generation is not None:
            left = max(0.0, self.last - elapsed)  # generations take about as long as the one before
        elif done:
            left = elapsed / done * (total - done)
        else:
            return ""
        return f"  ETA {left:.0f} s"

    def _erase(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False
