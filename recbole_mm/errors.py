"""Errors that the command line reports as one clear line and exit status 2."""


class RecBoleMMError(Exception):
    """Base class: bad input that the user can fix; the message says which file/field and how."""


class DataError(RecBoleMMError, ValueError):
    """A dataset file or dataset config entry is missing or malformed."""


class CheckpointError(RecBoleMMError):
    """A checkpoint cannot be loaded safely."""


class UnknownModelError(RecBoleMMError, ValueError):
    """The model name is neither a RecBole model nor a recbole_mm model."""


def config_choice(config, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    """``config[key]`` (``default`` when unset), which must be one of ``allowed``."""
    value = config[key] or default
    if value not in allowed:
        raise RecBoleMMError(f"{key}: {value!r} is not one of {', '.join(allowed)}; fix the config")
    return value
