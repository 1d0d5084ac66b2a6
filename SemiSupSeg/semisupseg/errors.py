"""Errors the user can fix: reported as one message plus a hint, exit code 2, no traceback."""


class InputError(Exception):
    """Bad user input (files, geometry, labels, configuration).

    ``message`` says what is wrong and names the case or file; ``hint`` says how to fix it.
    The CLI turns it into an ``error`` event and exit code 2.
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} Hint: {self.hint}" if self.hint else self.message
