"""Helpers of the hostile-input suites: run an entry point as a user would, then check the
promise: its exit status, exactly one line on stderr with no traceback and no Caffe abort, and
that nothing that existed before was changed or lost."""
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("Traceback", "Check failure", "*** ", "Aborted", "core dumped")


def run_entry(args, cwd=None, env=None, timeout=300, stdin=subprocess.DEVNULL, preexec_fn=None):
    """Run ``args`` (a script path relative to the repo first: .py through this interpreter);
    ``preexec_fn`` runs in the child before the exec (resource limits, dropped privileges)."""
    script = REPO / args[0]
    command = [sys.executable, str(script), *map(str, args[1:])] if script.suffix == ".py" \
        else [str(script), *map(str, args[1:])]
    full_env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
    return subprocess.run(command, cwd=cwd or REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=stdin, preexec_fn=preexec_fn)


def assert_one_line_error(proc, status, *fragments):
    """Exit ``status``; stderr exactly one line containing every fragment; no abort, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    report = f"exit {proc.returncode}\nstderr:\n{proc.stderr}\nstdout tail:\n{proc.stdout[-2000:]}"
    assert proc.returncode == status, report
    assert len(lines) == 1, report
    assert not any(word in proc.stderr for word in FORBIDDEN), report
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), report


def tree_digest(root):
    """{relative path: sha256} of every regular file under ``root`` (empty if it is missing)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def assert_unchanged(before, root):
    """Every file recorded in ``before`` is still under ``root`` with the same content."""
    after = tree_digest(root)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"changed or lost under {root}: {changed}"


def file_size_limit(nbytes):
    """A ``preexec_fn``: no file may grow past ``nbytes``, a full disk as far as the entry point
    can tell (its writes fail with EFBIG; SIGXFSZ ignored)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def assert_same_tree(before, root):
    """``assert_unchanged``, and nothing new either (no file left under any name)."""
    assert_unchanged(before, root)
    added = sorted(set(tree_digest(root)) - set(before))
    assert not added, f"written under {root}: {added}"


@contextlib.contextmanager
def read_only(path):
    """``path`` (a folder) unwritable for the duration: mode 555, and for root, which ignores
    modes, the immutable attribute (chattr +i); skips the test where neither holds."""
    path = Path(path)
    mode = path.stat().st_mode
    path.chmod(0o555)
    immutable = False
    try:
        if os.access(path, os.W_OK):
            chattr = shutil.which("chattr")
            immutable = bool(chattr) and subprocess.run(
                [chattr, "+i", str(path)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only for this user here")
        yield path
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr"), "-i", str(path)], check=True)
        path.chmod(mode)
