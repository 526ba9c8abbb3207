"""Reading a file named by untrusted input (an annotation file, an image path from one): only
a regular file of bounded size is read. A FIFO would block forever and /dev/zero never ends, so
the type is checked with ``stat`` before opening, and again on the opened (non-blocking) file in
case the path was swapped in between."""
import os
import stat

KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
         stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


class NotReadable(ValueError):
    """Not a regular file, or larger than the limit; the message is the reason, one line."""


def _check(mode, size, limit):
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in KINDS.items() if test(mode)), "not a file")
        raise NotReadable(f"not a regular file ({kind})")
    if size > limit:
        raise NotReadable(f"too large: {size:,} bytes (limit {limit:,})")


def read_regular_file(path, limit):
    """The bytes of ``path``; NotReadable for anything but a regular file of at most ``limit``
    bytes; OSError (missing, permission) passes through."""
    info = os.stat(path)
    _check(info.st_mode, info.st_size, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        _check(info.st_mode, info.st_size, limit)
        return f.read(limit)
