"""Progress reporting from the pipeline's step callback."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm


class StepProgress:
    """A tqdm bar advanced by ``callback`` (pass it as ``callback_on_step_end``); also forwards each step to
    ``on_step(done, total)`` when given (e.g. a UI progress bar)."""

    def __init__(self, total: int, desc: str = "steps", on_step: Callable[[int, int], None] | None = None,
                 disable: bool = False):
        self.total = total
        self.done = 0
        self.on_step = on_step
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=disable)

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.done = step + 1
        self.bar.update(1)
        if self.on_step is not None:
            self.on_step(self.done, self.total)
        return callback_kwargs

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
