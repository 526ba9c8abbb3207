"""Running an experiment: one train.sh run folder per configuration and seed, under one
experiment folder, each run in its own process so every train.sh option reaches it.

    OUT/experiment.json                       what the folder's runs were made with
    OUT/<configuration>-seed<N>/              a train.sh run (ABE_RUNS=OUT, --name ...-seed<N>),
                                              + result.json when done
    OUT/logs/<configuration>-seed<N>.log      each run's output

A run is *finished* when its ``result.json`` exists (written, atomically, only after train.sh
exited 0: it has evaluated the best snapshot into recall.json); it is skipped. A run folder
with a ``config.json`` but no result is continued with ``--resume`` (train.py takes its newest
readable snapshot), given only the options a resumed run may take. Anything else is started
fresh. A run that fails is reported and the others go on; the driver itself never deletes or
overwrites anything of a run.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from abe.errors import UserError
from abe.experiments import definitions
from abe.train.run_folder import write_atomic

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "train.sh"
RESULT = "result.json"
# Options that say where or on what a run executes, not what it computes: a rerun may change them.
PLACE_OPTIONS = {"--gpus", "--cpu", "--raw", "--lmdb-dir", "--eval-batch"}
# What a resumed run is given: where the data is (train.sh's own options) and where it runs;
# everything else, --max-iter included (experiment.json keeps it unchanged), is the run's own
# config.json, so a run stopped after its last iteration resumes into just its evaluation.
RESUME_OPTIONS = {"--raw", "--lmdb-dir", "--size", "--bbox", "--gpus", "--cpu"}
# train.sh options the driver sets itself.
DRIVER_OPTIONS = {"--name": "the driver names each run folder",
                  "--resume": "the driver resumes interrupted runs itself",
                  "--seed": "use --seeds (a list)", "--dataset": "give it before the options"}


def group_options(tokens):
    """{option: [values]} of pass-through tokens (``--x v``, ``--x=v``, bare ``--flag``)."""
    grouped, current = {}, None
    for token in tokens:
        if token.startswith("--"):
            current, _, value = token.partition("=")
            grouped[current] = [value] if value else []
        elif current is None:
            raise UserError(f"unexpected argument {token!r} (options are passed to train.sh)")
        else:
            grouped[current].append(token)
    return grouped


@dataclass
class Plan:
    """What one invocation runs: the configurations x seeds of an experiment on a dataset."""
    experiment: definitions.Experiment
    dataset: str
    folder: Path  # the experiment folder, absolute
    seeds: list
    configurations: list
    options: list  # pass-through tokens, verbatim

    def overridden(self):
        """Experiment flags the user's options replace (e.g. a smaller --M for a miniature)."""
        given = group_options(self.options)
        return sorted({f for c in self.configurations for f in c.flags if f"--{f}" in given})

    def runs(self):
        return [(c, seed) for c in self.configurations for seed in self.seeds]

    @staticmethod
    def run_name(configuration, seed):
        return f"{configuration.key}-seed{seed}"

    def run_dir(self, configuration, seed):
        return self.folder / self.run_name(configuration, seed)

    def log_path(self, configuration, seed):
        return self.folder / "logs" / f"{configuration.key}-seed{seed}.log"

    def command(self, configuration, seed, resume):
        """train.sh's arguments for a run; it runs with ABE_RUNS set to the experiment folder."""
        given = group_options(self.options)
        flags = {f: v for f, v in configuration.flags.items() if f"--{f}" not in given}
        head = [str(TRAIN_SH), "--dataset", self.dataset, "--name",
                self.run_name(configuration, seed)]
        tokens = definitions.flag_tokens(flags) + list(self.options)
        if resume:
            kept = {k: v for k, v in group_options(tokens).items() if k in RESUME_OPTIONS}
            return head + ["--resume"] + [t for k, v in kept.items() for t in [k, *v]]
        return head + tokens + ["--seed", str(seed)]


def make_plan(experiment, dataset, out=None, seeds=(0,), only=None, options=()):
    """Check the request and return its Plan (a UserError names the first problem)."""
    chosen = definitions.experiment(experiment, dataset)
    given = group_options(options)
    for option, why in DRIVER_OPTIONS.items():
        if option in given:
            raise UserError(f"{option} cannot be passed through: {why}")
    varied = sorted(f for f in chosen.varied_flags() if f"--{f}" in given)
    if varied:
        raise UserError(f"{experiment} varies --{varied[0]} across its configurations, so it "
                        f"cannot be set (pick configurations with --only)")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError("--seeds must be distinct non-negative integers")
    folder = runs_root() / (out or f"reproduce/{experiment}-{dataset}")
    return Plan(experiment=chosen, dataset=dataset, folder=folder.resolve(), seeds=list(seeds),
                configurations=chosen.select(only), options=list(options))


def runs_root():
    """Where runs go, as train.sh sees it: $ABE_RUNS, else the repository's runs/."""
    return Path(os.environ.get("ABE_RUNS") or REPO / "runs").resolve()


def settings_record(plan):
    """What decides the runs' results, for experiment.json (where they run is left out)."""
    options = {k: v for k, v in group_options(plan.options).items() if k not in PLACE_OPTIONS}
    return {"experiment": plan.experiment.name, "dataset": plan.dataset, "options": options}


def claim_folder(plan, create=True):
    """Check that the experiment folder's runs were made with these options; with ``create``,
    make the folder and its record if it has none."""
    record, path = settings_record(plan), plan.folder / "experiment.json"
    if path.exists():
        made = json.loads(path.read_text())
        if made != record:
            raise UserError(f"{plan.folder} holds runs made with other settings "
                            f"({json.dumps(made['options'])} on {made['dataset']}); rerun with "
                            f"those, or give another --out")
    elif create:
        plan.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2) + "\n")


def run_state(run_dir):
    """"finished", "resume" or "fresh" (see the module's docstring)."""
    if (run_dir / RESULT).exists():
        return "finished"
    if (run_dir / "config.json").exists():
        return "resume"
    return "fresh"


def last_line(log_path):
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def execute(command, log_path, runs_folder):
    """Run ``command`` with its output appended to ``log_path``; its exit status. Ctrl-C or
    SIGTERM to the driver interrupts the run (its own process group) and then the driver."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHON=sys.executable, ABE_RUNS=str(runs_folder))
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=REPO, start_new_session=True)
        try:
            return child.wait()
        except KeyboardInterrupt:
            stop(child)
            raise


def stop(child):
    """Interrupt a run's whole process group (train.sh, train.py, the data workers)."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
            child.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def interrupt_on_sigterm():
    """``kill DRIVER`` acts as Ctrl-C: the current run is stopped, then the driver."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def collect(plan, configuration, seed, command):
    """result.json of a run train.sh finished: Recall@K (ensemble, learners), the learners'
    mean self-pair cosine, params and MACs of its deploy net, training time."""
    from abe.eval import embeddings, plots
    from abe.net.model_stats import model_stats
    from abe.train.training import read_history

    run_dir = plan.run_dir(configuration, seed)
    recall = json.loads((run_dir / "recall.json").read_text())
    learners = embeddings.load(run_dir / "features.npz")["learners"]
    cosines = plots.self_pair_cosines(learners) if len(learners) > 1 else {}
    stats = model_stats(run_dir / "deploy.prototxt")
    history = read_history(run_dir / "history.csv")
    best = run_dir / "snapshots" / "best.json"
    result = {
        "experiment": plan.experiment.name, "configuration": configuration.key,
        "name": configuration.name, "dataset": plan.dataset, "seed": seed,
        "recall": recall["recall"], "learners": [e["recall"] for e in recall["learners"]],
        "self_pair": (float(sum(c.mean() for c in cosines.values()) / len(cosines))
                      if cosines else None),
        "params": stats.params, "macs": stats.macs,
        "train_s": float(history["wall_s"][-1]) if len(history.get("wall_s", [])) else None,
        "best_iteration": json.loads(best.read_text()).get("iteration") if best.exists() else None,
        "command": command}
    write_atomic(run_dir / RESULT, json.dumps(result, indent=2) + "\n")
    return result


@dataclass
class Outcome:
    configuration: definitions.Configuration
    seed: int
    status: str  # "skipped" (finished before), "done", "resumed", "failed"
    result: dict = None
    error: str = ""


def read_result(run_dir):
    return json.loads((run_dir / RESULT).read_text())


def dry_run(plan, out=print):
    """Print, for each run, what a real invocation would do and the command it would run."""
    import shlex

    claim_folder(plan, create=False)
    for configuration, seed in plan.runs():
        state = run_state(plan.run_dir(configuration, seed))
        if state == "finished":
            out(f"# {configuration.key} seed {seed}: finished, skipped")
            continue
        out(f"# {configuration.key} seed {seed}: {state}")
        out(f"ABE_RUNS={shlex.quote(str(plan.folder))} " +
            shlex.join(plan.command(configuration, seed, resume=state == "resume")))


def run_all(plan, note=print):
    """Run every (configuration, seed) of the plan that is not finished; one Outcome each."""
    from tqdm import tqdm

    claim_folder(plan)
    interrupt_on_sigterm()
    outcomes = []
    bar = tqdm(plan.runs(), desc=plan.experiment.name, unit="run", file=sys.stderr)
    for configuration, seed in bar:
        run_dir = plan.run_dir(configuration, seed)
        state = run_state(run_dir)
        label = f"{configuration.key} seed {seed}"
        if state == "finished":
            note(f"{label}: finished before, skipped")
            outcomes.append(Outcome(configuration, seed, "skipped", read_result(run_dir)))
            continue
        command = plan.command(configuration, seed, resume=state == "resume")
        log = plan.log_path(configuration, seed)
        note(f"{label}: {'resuming' if state == 'resume' else 'training'} "
             f"(log: {log.relative_to(REPO) if log.is_relative_to(REPO) else log})")
        started = time.perf_counter()
        status = execute(command, log, plan.folder)
        error = f"exit {status}: {last_line(log)}" if status != 0 else ""
        if not error:
            try:
                result = collect(plan, configuration, seed, command)
            except (UserError, OSError, ValueError, KeyError) as failure:
                error = f"its results could not be read: {failure}"
        if error:
            note(f"{label}: FAILED ({error})")
            outcomes.append(Outcome(configuration, seed, "failed", error=error))
            continue
        note(f"{label}: done in {time.perf_counter() - started:.0f} s, "
             f"Recall@{next(iter(result['recall']))} {100 * next(iter(result['recall'].values())):.2f}")
        outcomes.append(Outcome(configuration, seed, "resumed" if state == "resume" else "done",
                                result))
    bar.close()
    return outcomes
