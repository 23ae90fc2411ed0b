"""Exception types. Every error difflm raises on bad input is one of these, with a message that
says what to do; the CLI prints it as one line and exits non-zero."""


class DiffLMError(Exception):
    """Base class of all difflm errors."""


class ConfigError(DiffLMError, ValueError):
    """An invalid configuration value (unknown mode, out-of-range number, unknown key)."""


class ModelLoadError(DiffLMError):
    """A directory that holds no loadable model, or weights that do not fit their config."""


class InputError(DiffLMError, ValueError):
    """Bad arguments to a sampler, loss or evaluator (empty prompt, too long, steps < 1, ...)."""
