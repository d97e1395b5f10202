"""The closed set of error classes recorded in manifests, and the exception that carries one.

Every failed item or rejected catalog row ends in a row with one of these classes, so that a
person can count failures by class and reprocess by class. Adding a class is a contract change:
document it in README.md.
"""

from __future__ import annotations

import errno
from enum import StrEnum


class ErrorClass(StrEnum):
    """Why an item or a catalog row failed."""

    MISSING_FILE = "missing_file"              # the URI points at nothing
    EMPTY_FILE = "empty_file"                  # zero bytes
    DECODE_ERROR = "decode_error"              # corrupt or truncated media
    NO_VIDEO_STREAM = "no_video_stream"        # a file without video (audio-only, text, image)
    AUDIO_DECODE_ERROR = "audio_decode_error"  # translated audio that does not decode
    AUDIO_TOO_LONG = "audio_too_long"          # translated audio beyond the configured limit
    NO_FACE = "no_face"                        # no usable face in the video
    UNSUPPORTED_INPUT = "unsupported_input"    # decodes, but not something we can dub
    URI_NOT_ALLOWED = "uri_not_allowed"        # outside the configured roots, traversal, unknown scheme
    INVALID_ROW = "invalid_row"                # a listing row lacking a required field
    DUPLICATE_ID = "duplicate_id"              # a second row with an id already seen in the listing
    UNKNOWN_VIDEO = "unknown_video"            # a request for a video not in the catalog
    STORAGE_ERROR = "storage_error"            # the storage backend failed
    MODEL_ERROR = "model_error"                # a model could not be loaded or run
    INTERNAL = "internal"                      # a bug: anything not classified above


class ResyncError(Exception):
    """An error about one item that we understand: it names the item, the reason and a class."""

    def __init__(self, error_class: ErrorClass, reason: str, item: str | None = None) -> None:
        self.error_class = ErrorClass(error_class)
        self.reason = reason
        self.item = item
        super().__init__(f"{item}: {reason}" if item else reason)


# OS errors that say the storage failed (a full or read-only disk, a quota, an I/O error), whatever
# the item: they are storage_error, not bugs.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def classify(e: BaseException) -> ErrorClass:
    """The class an item worker records for ``e``: its own for a ``ResyncError``, ``storage_error``
    for an OS error of the storage (ENOSPC...), else ``internal``."""
    if isinstance(e, ResyncError):
        return e.error_class
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return ErrorClass.STORAGE_ERROR
    return ErrorClass.INTERNAL
