"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class AwareError(Exception):
    """Bad input from the user (config, file, data). Printed as one line, exit code 2.

    `key` is the config key the message blames ("model.name_or_path: …"), kept apart from `detail` so that a
    caller who knows which key really asked (a verifier loading its encoder model) can name its own instead.
    """

    exit_code = 2

    def __init__(self, message: str, *, key: str = ""):
        self.key, self.detail = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def with_key(self, key: str, context: str = "") -> "AwareError":
        """The same kind of error (class and attributes such as `exit_code` kept) blaming `key` instead, `context`
        put before the detail; raise it `from` self."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.key, other.detail = key, context + getattr(self, "detail", str(self))
        Exception.__init__(other, f"{key}: {other.detail}")
        return other


class ConfigError(AwareError):
    """A config key is unknown, mistyped or out of range."""


class DataError(AwareError):
    """A data file is missing or malformed (the message names file and line)."""


class ModelError(AwareError):
    """A model path or id cannot be loaded."""
