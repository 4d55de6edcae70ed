"""User-facing errors.

Anything a user can cause (a bad file, a wrong id, a missing package) is raised as
:class:`CoraError` with a one-line message that names the file / field / id. The CLI prints
the message and exits non-zero instead of showing a traceback from deep inside pandas or torch.
"""


class CoraError(Exception):
    """An error caused by user input or environment, with a one-line, actionable message."""
