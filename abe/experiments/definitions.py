"""The paper's experiments, read from ``experiments.json`` and expanded into configurations.

The experiments are data, not code paths: one table per experiment, whose entries are either
one configuration or an ``each`` row that stands for several (the values of its lists taken
position by position). The driver only ever sees the expanded list.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from abe.errors import UserError

EXPERIMENTS_FILE = Path(__file__).with_name("experiments.json")


@dataclass(frozen=True)
class Configuration:
    """One trained model of an experiment: ``flags`` are train.sh options without the dashes."""
    key: str  # the run folder's name, ASCII
    name: str  # the paper's label
    flags: dict

    def value(self, flag):
        return self.flags.get(flag)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper_dataset: str  # whose printed numbers stand beside ours when ours have none
    configurations: list
    sweep: str = None  # the flag a fig7 figure plots on its x axis
    datasets: list = None  # the datasets it needs (None: any)

    def varied_flags(self):
        """The flags whose value differs between configurations (what the experiment studies)."""
        flags = {f for c in self.configurations for f in c.flags}
        return {f for f in flags if len({json.dumps(c.value(f)) for c in self.configurations}) > 1}

    def select(self, keys):
        """The configurations named in ``keys`` (all for None), in the experiment's order."""
        if keys is None:
            return list(self.configurations)
        known = [c.key for c in self.configurations]
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise UserError(f"{self.name} has no configuration {unknown[0]!r} "
                            f"(it has: {', '.join(known)})")
        return [c for c in self.configurations if c.key in keys]


def format_value(value):
    """A flag value as a command line writes it: 1 not 1.0, 0.1 as 0.1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def flag_tokens(flags):
    """{"M": 8, "bbox": True} -> ["--M", "8", "--bbox"]."""
    tokens = []
    for flag, value in flags.items():
        if value is False or value is None:
            continue
        tokens.append(f"--{flag}")
        if value is not True:
            tokens.append(format_value(value))
    return tokens


def expand_entry(entry, common):
    """The configurations one entry of an experiment's table stands for."""
    each = entry.get("each", {})
    lengths = {len(values) for values in each.values()}
    if len(lengths) > 1:
        raise ValueError(f"'each' lists of {entry['key']} differ in length")
    configurations = []
    for position in range(lengths.pop() if lengths else 1):
        flags = dict(common, **entry.get("flags", {}))
        flags.update({flag: values[position] for flag, values in each.items()})
        labels = {flag: format_value(value) for flag, value in flags.items()}
        configurations.append(Configuration(key=entry["key"].format(**labels),
                                            name=entry["name"].format(**labels), flags=flags))
    return configurations


def load(path=EXPERIMENTS_FILE):
    """{name: Experiment} of every experiment in the data file."""
    table = json.loads(Path(path).read_text())
    experiments = {}
    for name, spec in table.items():
        if name.startswith("_"):
            continue
        configurations = [c for entry in spec["configurations"]
                          for c in expand_entry(entry, spec.get("flags", {}))]
        keys = [c.key for c in configurations]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{name}: configuration keys repeat: {keys}")
        experiments[name] = Experiment(name=name, title=spec["title"],
                                       paper_dataset=spec["paper_dataset"],
                                       configurations=configurations, sweep=spec.get("sweep"),
                                       datasets=spec.get("datasets"))
    return experiments


def experiment(name, dataset):
    """The experiment ``name``, checked to run on ``dataset``."""
    experiments = load()
    if name not in experiments:
        raise UserError(f"unknown experiment {name!r} (choose from {', '.join(experiments)})")
    chosen = experiments[name]
    if chosen.datasets and dataset not in chosen.datasets:
        raise UserError(f"{name} needs --dataset {' or '.join(chosen.datasets)} "
                        f"(got {dataset})")
    return chosen
