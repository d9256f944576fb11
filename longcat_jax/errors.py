"""Typed errors: each names what is wrong and how to fix it, so users never read an XLA traceback."""


class LongCatError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(LongCatError):
    """A checkpoint folder or file is missing, truncated, or does not match the model."""


class ConfigError(LongCatError, ValueError):
    """A config file or option has an unknown key or a value outside its range."""


class InputError(LongCatError, ValueError):
    """User input (sizes, frame counts, files) that the models cannot take as given."""
