"""The errors imgtune raises to its caller, each carrying the exit code the command line ends with.

Library code raises these (or subclasses kept beside the code that raises them: `TargetError`,
`CodecError`, `ImageError`, `AlreadyRunningError`, ...); the command line prints the message once
and exits with `exit_code`. Errors about one image of a folder job are not raised: that image is
reported as skipped and the run goes on.
"""

from __future__ import annotations

from .outcome import ExitCode

__all__ = ["ImgtuneError", "UsageError"]


class ImgtuneError(Exception):
    """Something imgtune cannot do, said in one line (a file and the reason)."""

    #: what the command line exits with: nothing could be done (a missing resource, a folder
    #: that takes no writes, another run holding the lock)
    exit_code: ExitCode = ExitCode.NOTHING_DONE


class UsageError(ImgtuneError, ValueError):
    """A bad value for an option: a target, a codec, a range, a colour, a preset."""

    exit_code = ExitCode.USAGE
