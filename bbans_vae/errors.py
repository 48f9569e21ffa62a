"""The one exception family the CLI turns into `vaecompress: error: ...` lines.

Library code raises these for anything a user can cause (bad files, wrong model, missing data).
Internal invariant violations stay ordinary exceptions: they are bugs, shown with --debug.
"""


class VaeCompressError(Exception):
    """A user-facing error with a one-line message that says what to do."""


class DataError(VaeCompressError):
    """A dataset file is missing, corrupt or unknown."""


class ModelError(VaeCompressError):
    """A model name, directory or checkpoint is unknown, incomplete or inconsistent."""


class InputError(VaeCompressError):
    """An input image or array cannot be coded by the chosen model."""


class ContainerError(VaeCompressError):
    """A .vae file is truncated, corrupt, of an unknown version, or for another model."""


class OutputError(VaeCompressError):
    """An output path exists (without --force) or cannot be written."""
