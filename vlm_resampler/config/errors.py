"""The one error type users see for a bad config: a short message, no traceback."""


class ConfigError(ValueError):
    pass
