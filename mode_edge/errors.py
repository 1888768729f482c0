"""Errors a user can act on: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (missing files, unsupported model, impossible request).

    The message says what is wrong; `hint` says what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message
