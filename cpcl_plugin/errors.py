"""The errors a user has to act on. Each says what to fix in one sentence, and the tools print
it alone (no traceback): `one_sentence = True` is what they, and FastReID's train loop (see
compat/loop.py's log filter), look for."""

__all__ = ["ConfigError", "DatasetError", "error_summary"]


class ConfigError(ValueError):
    """A config file, key or value the user has to fix; the message says which and how."""

    one_sentence = True


class DatasetError(ValueError):
    """Missing or malformed dataset files; the message names the file and entry."""

    one_sentence = True

    def __str__(self):
        # A DataLoader worker re-raises this error in the main process with the worker's
        # traceback pasted into the message; the user needs only its last line, the sentence.
        msg = super().__str__()
        marker = f"{DatasetError.__module__}.{DatasetError.__qualname__}: "
        if "Original Traceback" in msg and marker in msg:
            return msg.rsplit(marker, 1)[1].strip()
        return msg


def error_summary(err, limit=160):
    """"TypeName: first line of the message" of an exception from a library, to quote inside a
    ConfigError's sentence."""
    lines = str(err).splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0]
    if len(line) > limit:  # whole sentences where they fit, else whole words ("…" marks the cut)
        cut = line[:limit]
        end, space = cut.rfind(". "), cut.rfind(" ")
        line = cut[:end + 1] if end > 0 else \
            (cut[:space] if space > 0 else cut).rstrip(",;:") + " …"
    return f"{type(err).__name__}: {line}"
