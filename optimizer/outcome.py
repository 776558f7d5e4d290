"""Exit codes, and the counts of a run that decide them (the CLI only prints them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["EXIT_CODES_HELP", "ExitCode", "RunCounts"]


class ExitCode(IntEnum):
    OK = 0
    #: some inputs were skipped (unreadable, unpaired); everything else was done
    PARTIAL = 1
    #: bad command-line usage (click's own code)
    USAGE = 2
    #: the quality target was not met (by some pair, or by any recipe)
    TARGET_MISSED = 3
    #: nothing could be done: no usable input, or a required resource (weights) is missing
    NOTHING_DONE = 4
    #: interrupted by Ctrl-C; finished work is kept
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 all done; 1 some inputs skipped (named on stderr), the rest done; "
    "2 bad usage; 3 quality target missed; 4 nothing could be done "
    "(no usable input, LPIPS weights missing); 130 interrupted."
)


@dataclass
class RunCounts:
    done: int = 0
    skipped: int = 0
    missed: int = 0

    @property
    def exit_code(self) -> ExitCode:
        if self.done == 0 and self.missed == 0:
            return ExitCode.NOTHING_DONE
        if self.missed:
            return ExitCode.TARGET_MISSED
        if self.skipped:
            return ExitCode.PARTIAL
        return ExitCode.OK
