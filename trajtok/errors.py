"""User-facing errors.

Anything a user can cause (a bad file, a bad config key, a broken manifest row) raises a subclass of
`TrajTokError`. The command line prints such an error as one line, without a traceback; any other
exception is a bug and keeps its traceback.
"""


class TrajTokError(Exception):
    """An error caused by input the user gave; its message names the input and the problem."""


class ConfigError(TrajTokError):
    """A config file or override is malformed, has an unknown key, or a value of the wrong type."""


class RunDirectoryInUse(ConfigError):
    """Another live job writes the run directory (it holds the directory's writer lock)."""


class CheckpointWriteError(TrajTokError):
    """A checkpoint could not be written (the disk is full, a quota, a lost mount); the previous complete
    checkpoint is kept and the job stops."""


class VideoDecodeError(TrajTokError):
    """A video cannot be decoded: empty, truncated, not a video, audio only, or a decode that hangs.

    `kind` is what a job's summary counts it as; each subclass is one kind, so nothing reads the message."""

    kind = "undecodable"


class VideoMissing(VideoDecodeError):
    """The video is not where its row says."""

    kind = "missing file"


class NoVideoStream(VideoDecodeError):
    """The file is a container without a video stream (audio only, subtitles)."""

    kind = "no video stream"


class DecodeTimeout(VideoDecodeError):
    """A decoder call outlived its deadline (`DECODE_TIMEOUT`); the video is not read again."""

    kind = "decode timeout"


class TooShort(VideoDecodeError):
    """The window cannot hold one clip of the configured length and frame count."""

    kind = "too short"


class ManifestError(TrajTokError):
    """A manifest cannot be read, or one of its rows is malformed (the message carries the line)."""


class LabelFormatError(TrajTokError):
    """A label map or a TrajViT sidecar does not follow the label contract."""


class SchemaError(TrajTokError):
    """A shard sample does not follow the sample contract (the message names the field)."""
