"""The shared exit conventions (abe.cli, abe.errors) and the GPU pre-check (abe.train.devices)."""
import errno

import pytest

from abe import cli
from abe.errors import EnvironmentFailure, UserError
from abe.train import devices


def raising(error):
    def main():
        raise error
    return main


@pytest.mark.parametrize("error, status, text", [
    (UserError("--max-iter must be positive"), 2, "--max-iter must be positive"),
    (EnvironmentFailure("network unreachable"), 1, "network unreachable"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x"), 1, "No space left on device: runs/x"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.npz"), 2, "a.npz"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_run_turns_failures_into_one_line(capsys, error, status, text):
    assert cli.run(raising(error), "tool") == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: ") and text in err
    assert "Errno" not in err


def test_run_lets_bugs_through():
    with pytest.raises(ZeroDivisionError):
        cli.run(raising(ZeroDivisionError()), "tool")


def test_parser_usage_error_is_one_line(capsys):
    parser = cli.Parser(prog="tool")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_gpu_refused_on_this_cpu_only_build(caffe):
    assert devices.caffe_is_cpu_only()
    devices.require_gpus([])
    with pytest.raises(UserError, match="CPU-only"):
        devices.require_gpus([0])
