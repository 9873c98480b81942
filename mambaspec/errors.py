"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MambaspecError(Exception):
    """A problem with the user's input or environment, with a message that names the fix.

    The CLI prints ``str(error)`` on one line of stderr and exits with ``exit_code``; it never
    shows a traceback for this type.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
