"""Errors a user can fix. The CLI prints their message (no traceback) and exits with `exit_code`."""


class KClassifyError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class RecipeError(KClassifyError):
    """The recipe or an override is invalid."""


class DataError(KClassifyError):
    """A data source is missing, empty, corrupt or unreachable."""


class ModelFileError(KClassifyError):
    """A path given as a model is not a loadable model."""


class ExportError(KClassifyError):
    """Conversion to TFLite failed, e.g. an op that needs Flex."""


class MaxDropNotMet(ExportError):
    """No int8 file the max-drop search tried stays within the limit: nothing is shipped.
    `summary` is the search's record (every attempt), for the report."""

    def __init__(self, message, summary=None):
        super().__init__(message)
        self.summary = summary or {}


class TrainingDiverged(KClassifyError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = 3
