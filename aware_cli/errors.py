"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class AwareError(Exception):
    """Bad input from the user (config, file, data). Printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(AwareError):
    """A config key is unknown, mistyped or out of range."""


class DataError(AwareError):
    """A data file is missing or malformed (the message names file and line)."""


class ModelError(AwareError):
    """A model path or id cannot be loaded."""
