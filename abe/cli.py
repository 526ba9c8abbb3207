"""Exit conventions shared by every command line in tools/, data_prep/ and weights/.

A user error is one line on stderr and exit 2, an environment failure one line and exit 1,
Ctrl-C one line and exit 130: the promise in the README's "What bad input gets". The commands
themselves stay in tools/ (parse arguments, call the library); only the conventions live here.
"""
import argparse
import errno
import math
import sys

from abe.errors import EnvironmentFailure, UserError

# OSErrors that say the machine failed, not the user's input.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ENOMEM, errno.EROFS,
                      errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ETIMEDOUT}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (no usage block) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind, above=None, at_least=None):
    """argparse ``type``: a finite ``kind`` (int or float) > ``above`` / >= ``at_least``, so that
    0, a negative count, nan or inf never silently reach a default or a config file."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} is needed, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"a finite number is needed, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be greater than {above}, got {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least}, got {text}")
        return value
    return parse


def os_error_line(error):
    """``strerror: filename`` without Python's ``[Errno N]`` prefix."""
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def run(main, prog):
    """Run ``main()`` and turn the known failures into one line on stderr and their status."""
    try:
        return main()
    except UserError as error:
        status, line = 2, str(error)
    except EnvironmentFailure as error:
        status, line = 1, str(error)
    except KeyboardInterrupt:
        status, line = 130, "interrupted"
    except OSError as error:
        status = 1 if error.errno in ENVIRONMENT_ERRNOS else 2
        line = os_error_line(error)
    print(f"{prog}: error: {line}", file=sys.stderr)
    return status
