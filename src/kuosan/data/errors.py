"""The one exception type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset cannot be loaded: missing folder, no or unreadable images, bad dataset name.

    The message is one line and names the offending path or name, so the command-line tool can show
    it to the user as is. It subclasses ``ValueError`` because every such failure is bad input.
    """
