"""User-facing errors.

Every problem a user can cause (a bad config value, a missing file, an unknown model) is a
`ConfigError` naming the field, the value and the fix. The CLI prints it as one line and
exits with code 2; the app shows it next to the field. Anything else is a bug or a fault
(NaN loss, out of memory) and is reported as a failed run, never as a traceback in the UI.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    field: str
    value: object
    fix: str

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.fix}"


class ConfigError(ValueError):
    """One or more invalid inputs. `problems` lists them, each with field, value and fix."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, field: str, value: object, fix: str) -> "ConfigError":
        return cls(Problem(field, value, fix))

    def for_field(self, field: str) -> list[Problem]:
        return [p for p in self.problems if p.field == field]


class TrainingFault(RuntimeError):
    """A run could not continue (non-finite loss, out of memory). `hint` says what to change."""

    def __init__(self, message: str, hint: str, step: int | None = None):
        self.hint = hint
        self.step = step
        super().__init__(message)


# The hints a failed run's status carries, for the faults the engine recognizes.
OOM_HINT = "lower batch_size or max_len (or use a smaller model)"
NAN_HINT = "lower lr (e.g. halve it), keep grad_clip on, or lower alpha/alpha_max"
BUG_HINT = "this looks like a bug; the metrics so far are kept"
