"""The two kinds of failure every entry point reports in one line, never as a traceback.

Library code raises them; the command lines turn them into exit statuses (see ``abe.cli``):
a ``UserError`` is something the user can fix in the command or the inputs (exit 2), an
``EnvironmentFailure`` is the machine failing the user (disk full, network down, no GPU build:
exit 1). Anything else is a bug and may show a traceback.
"""


class UserError(Exception):
    """Bad input: a wrong option, a file that is not what it claims, a run folder in use."""


class EnvironmentFailure(Exception):
    """The environment failed: full disk, unreachable server, missing build feature."""
