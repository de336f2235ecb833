"""Errors shown to users as one clear line (by the CLI and the stage scripts)."""


class WbcError(Exception):
    """Base class of the errors wbc reports to users without a traceback."""


class DownloadError(WbcError):
    """A source could not be fetched (offline, HTTP error, timeout)."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the expected size or sha256."""


class ArchiveError(WbcError):
    """An archive is unreadable, encrypted, or contains unsafe members."""


class ConfigError(WbcError):
    """A bad parameter value (unknown model, unknown profile, impossible split, ...)."""
