"""Errors that tell the user which file, key or value is wrong and what to do about it."""


class XsaeError(Exception):
    """Base class: any error the workflow reports to the user as a one-paragraph message."""


class ConfigError(XsaeError):
    """A configuration key or value is invalid."""


class DataError(XsaeError):
    """An input file is missing, corrupt or inconsistent with another input."""


class DownloadError(XsaeError):
    """A download could not be completed or verified."""
