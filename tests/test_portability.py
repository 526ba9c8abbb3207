"""Set-up and runs that hold on other machines: the Debian mirror from apt's own configuration,
a broken venv made again, failures that name what failed, and train.sh with a read-only
repository (an Apptainer image on a cluster) writing only to its data, runs and weights folders."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

MIRROR = REPO / "scripts" / "debian_mirror.sh"
MAKE_VENV = REPO / "scripts" / "make_venv.sh"


def debian_mirror(tmp_path, sources_list="", parts=None, env=None):
    """Run debian_mirror.sh against an apt configuration made of the given files only."""
    (tmp_path / "sources.list").write_text(sources_list)
    (tmp_path / "parts").mkdir()
    for name, text in (parts or {}).items():
        (tmp_path / "parts" / name).write_text(text)
    (tmp_path / "apt.conf").write_text(f'Dir::Etc::sourcelist "{tmp_path}/sources.list";\n'
                                       f'Dir::Etc::sourceparts "{tmp_path}/parts";\n')
    run_env = {k: v for k, v in os.environ.items() if k != "ABE_DEBIAN_MIRROR"}
    run_env.update(APT_CONFIG=str(tmp_path / "apt.conf"), **(env or {}))
    return subprocess.run(["bash", str(MIRROR)], capture_output=True, text=True, env=run_env)


def test_mirror_from_deb822_skips_security_updates_and_disabled_entries(tmp_path):
    sources = ("Types: deb\nURIs: http://security.invalid/debian-security\nSuites: trixie-security\n"
               "Components: main\n\n"
               "Types: deb\nURIs: http://off.invalid/debian\nSuites: trixie\nComponents: main\n"
               "Enabled: no\n\n"
               "# Types: deb\n"
               "Types: deb deb-src\nURIs: http://mirror.invalid/debian/\n"
               "Suites: trixie trixie-updates\nComponents: main\n")
    run = debian_mirror(tmp_path, parts={"debian.sources": sources})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "http://mirror.invalid/debian\n"


def test_mirror_from_classic_sources_list_with_options(tmp_path):
    run = debian_mirror(tmp_path, sources_list=(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src-only.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://local.invalid:3142/debian bookworm main\n"))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "http://local.invalid:3142/debian\n"


def test_no_debian_mirror_says_what_to_configure(tmp_path):
    run = debian_mirror(tmp_path, sources_list="deb http://archive.invalid/ubuntu noble main\n")
    assert run.returncode == 1 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1
    assert "no Debian archive in the apt configuration" in run.stderr
    assert "ABE_DEBIAN_MIRROR" in run.stderr


def test_mirror_override(tmp_path):
    run = debian_mirror(tmp_path, env={"ABE_DEBIAN_MIRROR": "http://override.invalid/debian"})
    assert run.returncode == 0 and run.stdout == "http://override.invalid/debian\n"


def make_venv(venv, requirements, env=None):
    return subprocess.run(["bash", str(MAKE_VENV), str(venv), str(requirements), sys.executable],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_incomplete_venv_is_made_again(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)  # what an interrupted `python -m venv` can leave
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    run = make_venv(venv, requirements)
    assert run.returncode == 0, run.stderr
    assert "incomplete" in run.stderr
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], check=True,
                   capture_output=True)
    again = make_venv(venv, requirements)
    assert again.returncode == 0 and again.stderr == ""  # complete and up to date: untouched


def test_unreachable_package_index_is_named(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("abe-no-such-package==1.0\n")
    # pip's configuration here is replaced by an index nobody listens on.
    offline = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
               "PIP_FIND_LINKS": "", "PIP_RETRIES": "1", "PIP_TIMEOUT": "5"}
    run = make_venv(tmp_path / "venv", requirements, env=offline)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line != "setup: installing Python "
              f"dependencies into {tmp_path / 'venv'}"]
    assert len(errors) == 1 and errors[0].startswith("setup: pip could not reach the package index")
    assert not (tmp_path / "venv" / ".requirements.sha256").exists()  # retried on the next run


def read_only_command(argv):
    """argv with the repository mounted read-only over itself, in a private mount namespace
    (root: a read-only mount binds root too; others: a user namespace), or None."""
    mount = (f"mount --bind {REPO} {REPO} && mount -o remount,bind,ro {REPO} || exit 98; "
             f'if touch {REPO}/.rw-probe 2>/dev/null; then exit 99; fi; exec "$@"')
    ns = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        ns.insert(1, "--map-root-user")
    probe = subprocess.run([*ns, "true"], capture_output=True)
    return None if probe.returncode else [*ns, "bash", "-c", mount, "ro", *argv]


def test_train_sh_with_a_read_only_repository(tmp_path):
    """As on a cluster: the image read-only, only the data, runs and weights folders writable."""
    argv = read_only_command([
        str(REPO / "train.sh"), "--dataset", "digits", "--name", "ro", "--size", "40",
        "--from-scratch", "--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "16",
        "--max-iter", "2", "--eval-every", "2", "--snapshot-every", "2"])
    if argv is None:
        pytest.skip("no mount namespace here (unshare refused)")
    folders = {name: tmp_path / name for name in ("data", "runs", "weights")}
    for folder in folders.values():
        folder.mkdir()
    env = dict(os.environ, ABE_DATA=str(folders["data"]), ABE_RUNS=str(folders["runs"]),
               ABE_WEIGHTS=str(folders["weights"]), PYTHONDONTWRITEBYTECODE="1",
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]  # 98: no read-only mount, 99: still writable
    recall = json.loads((folders["runs"] / "ro" / "recall.json").read_text())
    assert set(recall["recall"]) == {"1", "2", "4", "8"}
    assert (folders["data"] / "lmdb" / "digits" / "train_lmdb").is_dir()
