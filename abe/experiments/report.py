"""The report of an experiment folder: our numbers beside the paper's printed ones.

``report.md`` and ``report.csv`` hold one row per configuration of the experiment: Recall@K of
the ensemble (mean, and with several seeds ± the standard deviation over the seeds), the
individual learners (mean ± the population standard deviation over the learners, the paper's
"±", averaged over the seeds), the learners' mean self-pair cosine, params and MACs of the
deploy net, the iteration of the evaluated snapshot (the best Recall@1 of the periodic
evaluations, the paper's practice), and the paper's value beside each where
``paper_results.json`` has one ("≈" where it was read off a figure). A fig7 experiment also gets
``<experiment>.png``: Recall@1 against the swept value, ours and the paper's, as the paper's
Fig. 7 plots it.
"""
import csv
import io
import json
from pathlib import Path

import numpy as np

from abe.experiments import runs

PAPER_FILE = Path(__file__).with_name("paper_results.json")


def paper_numbers(experiment, dataset):
    """(dataset whose numbers are shown, its display name, {configuration key: row})."""
    data = json.loads(PAPER_FILE.read_text())
    tables = data.get(experiment.name, {})
    shown = dataset if dataset in tables else experiment.paper_dataset
    return shown, data["datasets"][shown], tables.get(shown, {})


def mean_spread(values, ddof):
    """(mean, standard deviation) of a list; the spread is None for a single value."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=ddof)) if len(values) > 1 else None)


def summarize(plan, outcomes=()):
    """One dict per configuration of the experiment (selected or not), from the run folders."""
    failed = {}
    for outcome in outcomes:
        if outcome.status == "failed":
            failed.setdefault(outcome.configuration.key, []).append(
                f"seed {outcome.seed}: {outcome.error}")
    rows = []
    for configuration in plan.experiment.configurations:
        results = [runs.read_result(plan.run_dir(configuration, seed)) for seed in plan.seeds
                   if runs.run_state(plan.run_dir(configuration, seed)) == "finished"]
        row = {"key": configuration.key, "name": configuration.name,
               "seeds": [r["seed"] for r in results], "failed": failed.get(configuration.key, [])}
        if results:
            ks = list(results[0]["recall"])
            row["recall"] = {k: mean_spread([r["recall"][k] for r in results], ddof=1) for k in ks}
            if len(results[0]["learners"]) > 1:
                # per seed: mean and spread over the learners; then averaged over the seeds
                per_seed = {k: [mean_spread([e[k] for e in r["learners"]], ddof=0)
                                for r in results] for k in ks}
                row["individual"] = {k: (float(np.mean([m for m, _ in v])),
                                         float(np.mean([s for _, s in v]))) for k, v in per_seed.items()}
            pairs = [r["self_pair"] for r in results if r["self_pair"] is not None]
            row["self_pair"] = float(np.mean(pairs)) if pairs else None
            row["params"], row["macs"] = results[0]["params"], results[0]["macs"]
            row["best_at"] = " ".join(str(r["best_iteration"]) for r in results)
            times = [r["train_s"] for r in results if r.get("train_s") is not None]
            row["train_s"] = float(np.mean(times)) if times else None
        rows.append(row)
    return rows


def status(row, n_seeds):
    if row["failed"]:
        return "FAILED " + "; ".join(row["failed"])
    done = len(row["seeds"])
    if done == n_seeds:
        return "done"
    return f"{done} of {n_seeds} seeds" if done else "not run"


def percent(value):
    """Ours: a fraction (mean, spread) -> '63.95' or '63.95 ± 1.20'."""
    if value is None:
        return ""
    mean, spread = value
    return f"{100 * mean:.2f}" + (f" ± {100 * spread:.2f}" if spread is not None else "")


def printed(paper_row, field, value):
    """The paper's number as printed, '≈' before a figure reading, '' where none."""
    if value is None:
        return ""
    text = f"{value[0]} ± {value[1]}" if isinstance(value, list) else str(value)
    return ("≈" if field in paper_row.get("approximate", ()) else "") + text


def ks_of(rows, dataset):
    from abe.eval.evaluation import default_ks

    for row in rows:
        if "recall" in row:
            return list(row["recall"])
    return [str(k) for k in default_ks(dataset)]


def table_cells(row, paper_row, ks):
    """{column: (ours, paper)} of one row, formatted for report.md."""
    paper_recall = paper_row.get("recall", {})
    paper_individual = paper_row.get("individual", {})
    cells = {f"R@{k}": (percent(row.get("recall", {}).get(k)),
                        printed(paper_row, "recall", paper_recall.get(k))) for k in ks}
    cells[f"ind. R@{ks[0]}"] = (percent(row.get("individual", {}).get(ks[0])),
                                printed(paper_row, "individual", paper_individual.get(ks[0])))
    cells["self-pair cos"] = (
        f"{row['self_pair']:.2f}" if row.get("self_pair") is not None else "",
        printed(paper_row, "self_pair", paper_row.get("self_pair")))
    cells["params (10^7)"] = (f"{row['params'] / 1e7:.2f}" if "params" in row else "",
                              printed(paper_row, "params", f"{paper_row['params'] / 1e7:.2f}"
                                      if "params" in paper_row else None))
    cells["MACs (10^9)"] = (f"{row['macs'] / 1e9:.3g}" if "macs" in row else "",
                            printed(paper_row, "macs", f"{paper_row['macs'] / 1e9:.3g}"
                                    if "macs" in paper_row else None))
    return cells


def markdown(plan, rows):
    shown, shown_name, paper = paper_numbers(plan.experiment, plan.dataset)
    names = json.loads(PAPER_FILE.read_text())["datasets"]
    ks = ks_of(rows, plan.dataset)
    ours_name = names.get(plan.dataset, plan.dataset)
    lines = [f"# {plan.experiment.title}", "",
             f"Ours: {ours_name}, seeds {', '.join(map(str, plan.seeds))}; options given: "
             f"`{' '.join(plan.options) or '(none)'}`" +
             (f" (replacing the paper's {', '.join('--' + f for f in plan.overridden())})"
              if plan.overridden() else "") + ".",
             f"Paper columns: **{shown_name}** numbers" +
             (f" (the paper has none for {ours_name}; ours are on {ours_name})"
              if shown != plan.dataset else "") +
             ", from ABE_SPEC section 5; ≈ = read off a figure, not printed; blank = not printed.",
             "Spread: ensemble Recall ± = standard deviation over the seeds (n-1); ind. = the "
             "individual learners, mean ± standard deviation over the learners (the paper's ±), "
             "averaged over the seeds. best at = the iteration of the snapshot evaluated (the "
             "best Recall@1 of the periodic evaluations, the paper's practice).", ""]
    header = ["configuration"]
    body = []
    for row in rows:
        cells = table_cells(row, paper.get(row["key"], {}), ks)
        if len(header) == 1:
            for column in cells:
                header += [column, "paper"]
            header += ["best at", "train s", "status"]
        line = [row["name"]] + [c for pair in cells.values() for c in pair]
        line += [row.get("best_at", ""),
                 f"{row['train_s']:.0f}" if row.get("train_s") is not None else "",
                 status(row, len(plan.seeds))]
        body.append(line)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in body]
    notes = [f"- {row['name']}: {paper[row['key']]['source']}" for row in rows
             if "source" in paper.get(row["key"], {})]
    if notes:
        lines += ["", "Paper numbers' sources:"] + notes
    return "\n".join(lines) + "\n"


def in_percent(value):
    """A (mean, spread) of fractions in percent; (None, None) for no value."""
    if value is None:
        return None, None
    return tuple(None if v is None else 100 * v for v in value)


def csv_text(plan, rows):
    """Every number, unrounded; Recall in percent, ours and the paper's alike."""
    shown, _, paper = paper_numbers(plan.experiment, plan.dataset)
    ks = ks_of(rows, plan.dataset)
    columns = ["experiment", "configuration", "name", "dataset", "seeds", "status"]
    for k in ks:
        columns += [f"recall@{k}_pct", f"recall@{k}_sd_over_seeds", f"paper_recall@{k}"]
    for k in ks:
        columns += [f"ind_recall@{k}_pct", f"ind_recall@{k}_sd_over_learners",
                    f"paper_ind_recall@{k}", f"paper_ind_recall@{k}_spread"]
    columns += ["self_pair", "paper_self_pair", "params", "paper_params", "macs", "paper_macs",
                "train_s", "paper_dataset", "paper_approximate"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        p = paper.get(row["key"], {})
        line = {"experiment": plan.experiment.name, "configuration": row["key"],
                "name": row["name"], "dataset": plan.dataset,
                "seeds": " ".join(map(str, row["seeds"])), "status": status(row, len(plan.seeds)),
                "self_pair": row.get("self_pair"), "paper_self_pair": p.get("self_pair"),
                "params": row.get("params"), "paper_params": p.get("params"),
                "macs": row.get("macs"), "paper_macs": p.get("macs"),
                "train_s": row.get("train_s"), "paper_dataset": shown,
                "paper_approximate": " ".join(p.get("approximate", ()))}
        for k in ks:
            line[f"recall@{k}_pct"], line[f"recall@{k}_sd_over_seeds"] = in_percent(
                row.get("recall", {}).get(k))
            line[f"paper_recall@{k}"] = p.get("recall", {}).get(k)
            line[f"ind_recall@{k}_pct"], line[f"ind_recall@{k}_sd_over_learners"] = in_percent(
                row.get("individual", {}).get(k))
            line[f"paper_ind_recall@{k}"], line[f"paper_ind_recall@{k}_spread"] = \
                p.get("individual", {}).get(k, (None, None))
        writer.writerow(line)
    return out.getvalue()


def sweep_figure(plan, rows, path):
    """Paper Fig. 7 layout: Recall@1 against the swept value, ours and the paper's."""
    from abe.eval import plots

    plt = plots.plt
    shown, shown_name, paper = paper_numbers(plan.experiment, plan.dataset)
    k = ks_of(rows, plan.dataset)[0]
    labels = [str(c.value(plan.experiment.sweep)) for c in plan.experiment.configurations]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    paper_y = [paper.get(r["key"], {}).get("recall", {}).get(k, np.nan) for r in rows]
    ax.plot(x, paper_y, "s--", color="tab:gray",
            label=f"paper ({shown_name}, read off Fig. 7, ≈)")
    ours = [(i, r["recall"][k]) for i, r in enumerate(rows) if "recall" in r]
    if ours:
        mean = [100 * m for _, (m, _) in ours]
        spread = [100 * (s or 0) for _, (_, s) in ours]
        ax.errorbar([i for i, _ in ours], mean, yerr=spread if any(spread) else None,
                    fmt="o-", color="tab:blue", capsize=3, label=f"ours ({plan.dataset})")
    ax.set_xticks(x, labels)
    ax.set(xlabel=plan.experiment.sweep, ylabel=f"Recall@{k} (%)", title=plan.experiment.title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)


def write(plan, outcomes=()):
    """Write report.md, report.csv (and the fig7 PNG) into the experiment folder; return the
    markdown text and the paths written."""
    rows = summarize(plan, outcomes)
    text = markdown(plan, rows)
    written = [plan.folder / "report.md", plan.folder / "report.csv"]
    runs.write_atomic(written[0], text)
    runs.write_atomic(written[1], csv_text(plan, rows))
    if plan.experiment.sweep:
        written.append(sweep_figure(plan, rows, plan.folder / f"{plan.experiment.name}.png"))
    return text, written
