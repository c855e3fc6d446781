"""A StepReporter that keeps what the user would see, for asserting on the steps of a lifecycle call."""

from __future__ import annotations


class StepRecorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, name: str) -> None:
        self.seen.append(name)

    def fail(self) -> None:
        self.seen.append("✗")
