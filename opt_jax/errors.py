"""The one family of errors a user can cause: every one derives from `OptJaxError`.

Scripts end through `opt_jax.cli.run`, which catches `OptJaxError` only and prints its message
(`error: ...`, exit status 1); anything else is a bug and shows its traceback. Each class also
derives from the builtin it used to be (`ValueError`, `FileNotFoundError`, `RuntimeError`), so code
that caught those still does.
"""

from __future__ import annotations


class OptJaxError(Exception):
    """Base of every error a user can cause: bad input, flags, files or directories, named in the message."""


class ConfigError(OptJaxError, ValueError):
    """A configuration that opt_jax cannot run faithfully."""


class CheckpointError(OptJaxError, ValueError):
    """A checkpoint (Hugging Face or converted) that cannot be read or written as asked."""


class CorpusError(OptJaxError, ValueError):
    """A corpus file that cannot be read as text; the message names the file (and line)."""


class TokenizerError(OptJaxError, ValueError):
    """A tokenizer that cannot be trained, saved or loaded as asked."""


class TrainError(OptJaxError, ValueError):
    """A training run that cannot start or resume as asked."""


class InputError(OptJaxError, ValueError):
    """An argument out of its range or of the wrong shape (sizes, layers, sequence lengths, names)."""


class MissingError(OptJaxError, FileNotFoundError):
    """A file or directory the work needs does not exist; the message names it."""


class StatsError(OptJaxError, ValueError):
    """A statistics directory that cannot be used as asked; the message names it and the problem."""


class AnalysisError(OptJaxError, ValueError):
    """An analysis that cannot run on the statistics or options given."""


class NgramBudgetError(OptJaxError, RuntimeError):
    """Exact n-gram counting would hold more distinct pairs than the budget allows."""
