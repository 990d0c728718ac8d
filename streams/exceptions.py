"""The project's root error; every area's errors derive from it so the CLI can tell a user
mistake (print one line, exit non-zero) from a bug (let the traceback through)."""


class EstopError(Exception):
    """Base of every error estop raises on purpose."""

    exit_code = 1


class UsageError(EstopError):
    """A bad command or bad input from the user: nothing was written."""

    exit_code = 2


class MissingProgramError(EstopError):
    """A program estop runs (java, mvn) is not installed."""


class MissingExtraError(EstopError):
    """A command needs optional dependencies that were not installed (an extra of the package)."""

    def __init__(self, command: str, extra: str) -> None:
        super().__init__(f"{command} needs the {extra} extra: pip install 'estop[{extra}]'")


class MavenError(EstopError):
    """A Java artifact could not be resolved (no `mvn`, no network, an unknown version)."""
