"""User-facing errors.

Anything a user can cause (a bad file, a wrong id, a missing package) is raised as
:class:`CoraError` with a one-line message that names the file / field / id. The CLI prints
the message and exits non-zero instead of showing a traceback from deep inside pandas or torch.
"""


class CoraError(Exception):
    """An error caused by user input or environment, with a one-line, actionable message."""


def one_line(what: object, limit: int | None = 200) -> str:
    """An exception or a message as one line: its lines joined by single spaces, cut at ``limit``
    characters; an exception without text gives its class name. What every one-line error message
    quotes from a library's exception (pyarrow, safetensors, transformers span many lines)."""
    text = " ".join(str(what).split())
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."
