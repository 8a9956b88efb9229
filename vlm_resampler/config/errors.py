"""The one error type users see for a bad config: a short message, no traceback."""
from vlm_resampler.errors import UserFacingError


class ConfigError(UserFacingError, ValueError):
    pass
