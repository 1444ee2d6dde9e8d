"""Errors a user can cause; each message names the thing and the fix."""


class VislibError(Exception):
    """Base class of every error caused by user input (config, files, names)."""


class UnknownNameError(VislibError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


class LayerError(VislibError):
    """A layer that does not exist or does not fit the method."""


class ConfigError(VislibError):
    """A config value that is invalid."""


class DataError(VislibError):
    """A dataset file that is missing, empty or malformed."""


class ImageDecodeError(DataError):
    """An image file that cannot be decoded."""


class MissingWeightsError(VislibError):
    """Pretrained weights that are not available offline."""
