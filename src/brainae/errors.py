"""Errors and warnings that reach the user as one clear line.

Library code raises :class:`BrainaeError` with a message that names what is wrong, which file, and how to
fix it; the command line prints that message on one line and exits non-zero, with no traceback. Problems
that the rest of the work can proceed without are reported with :class:`BrainaeWarning` (via
``warnings.warn``), which the command line prints as one ``warning:`` line each.
"""

from __future__ import annotations


class BrainaeError(Exception):
    """A user-facing error: the message is shown as is, on one line.

    Errors cross process boundaries intact (a ``--workers`` process raises, the main process reports): every
    subclass pickles as its class and its message (plus what its ``__reduce__`` adds).
    """

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (self.__class__, (str(self),))


class BrainaeWarning(UserWarning):
    """A user-facing warning: something was skipped or adjusted, the work goes on."""
