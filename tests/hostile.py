"""Helpers of the hostile-input suites: run an entry point as a user would, then check the
promise: its exit status, exactly one line on stderr with no traceback and no Caffe abort, and
that nothing that existed before was changed or lost."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

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
