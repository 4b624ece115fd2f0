"""User-facing errors.

A `LabError` carries a message meant for a person: what went wrong, naming the bad value, and
what to do instead. The CLI prints it on one line and exits with code 2; pages show it with
`st.error`. Anything else that escapes is a bug.
"""


class LabError(Exception):
    """A problem with the user's input or environment, explained in plain words."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def __reduce__(self):  # message and hint apart, through pickling (an error raised in a simulation process)
        return _rebuilt, (type(self), self.message, self.hint)


def _rebuilt(cls: type, message: str, hint: str | None) -> LabError:
    error = cls.__new__(cls)
    LabError.__init__(error, message, hint)
    return error


class Cancelled(LabError):
    """The person cancelled the work (e.g. while it waited in a queue): not a failure."""
