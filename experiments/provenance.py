"""How each committed record was made: its commands, seeds, machine, merges and per-seed rows.

Every experiment writes one record, ``experiments/results/NAME.json`` (see
:mod:`experiments.common`); ``checkpoints/cards.json`` holds the same for the shipped
models. Appendix B of the book prints, for each, what a reader needs to make the numbers
again. This module turns a record into those lines and tables, as plain text, so the
appendix's cells stay short and a test can check what they print.

    from experiments import provenance
    print(provenance.report(provenance.read("fpn_table1")))
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.common import RESULTS, compare

CHECKPOINTS = RESULTS.parents[1] / "checkpoints"

# record -> (the chapter that shows it, its file stem, what it measures)
SHOWN_IN = {
    "fpn_table1": ("chapter 2", "02_pyramids", "FPN Table 1: RPN on one map or on a pyramid"),
    "focal_table1": ("chapter 3", "03_focal_loss", "focal loss Table 1: CE, balanced CE, focal loss"),
    "roialign_table2": ("chapter 4", "04_roi_align", "Mask R-CNN Table 2c/2d: RoIPool, RoIAlign"),
    "mask_table2b": ("chapter 5", "05_second_stage", "Mask R-CNN Table 2b: softmax, sigmoid masks"),
    "lse_table1": ("chapter 6", "06_weight_transfer", "LSE Table 1: weight transfer"),
    "lse_table1_scratch": ("appendix B", "B_how_the_numbers_were_made", "LSE Table 1, detectors from scratch"),
    "recipe": ("appendix A", "A_training_on_a_laptop", "the training recipe, variant by variant"),
    "torchvision_compare": ("appendix A", "A_training_on_a_laptop", "fpnbook's Mask R-CNN against torchvision's"),
}

# The per-seed columns each seeded record prints (a record's runs hold more: losses, timings of parts).
COLUMNS = {
    "fpn_table1": ("AR100", "AR1000", "ARs", "ARm", "ARl", "train_s"),
    "focal_table1": ("AP", "AP50", "AP75", "APs", "APm", "APl", "train_s"),
    "roialign_table2": ("AP", "AP50", "AP75", "train_s"),
    "mask_table2b": ("AP", "AP50", "AP75", "train_s"),
    "lse_table1": ("mask_AP", "true_box_mask_AP", "box_AP", "train_s"),
}

# Learning to Segment Every Thing, Table 1: the ten rows of each direction, and the paper's finer orderings
# (better, worse) that chapter 6 leaves to appendix B. The last two are not in the paper.
LSE_ROWS = ("class-agnostic", "transfer cls", "transfer box", "transfer cls+box", "transfer cls+box, linear T",
            "transfer+MLP", "transfer, e2e", "transfer, e2e + stop-grad",
            "oracle (all masks)", "oracle, class-agnostic")
LSE_ABLATIONS = (
    ("the oracle beats transfer", "oracle (all masks)", "transfer cls+box"),
    ("cls+box beats cls", "transfer cls+box", "transfer cls"),
    ("cls+box beats box", "transfer cls+box", "transfer box"),
    ("the 2-layer T beats the linear T", "transfer cls+box", "transfer cls+box, linear T"),
    ("the MLP branch helps transfer", "transfer+MLP", "transfer cls+box"),
    ("unseen masks help (not in the paper)", "oracle, class-agnostic", "class-agnostic"),
    ("class-specific masks help, given every mask (not in the paper)", "oracle (all masks)", "oracle, class-agnostic"),
)


def read(name: str, folder: Path = RESULTS) -> dict:
    """The committed record ``folder/NAME.json``."""
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no record {path}; run `python -m experiments.{name.split('_scratch')[0]}`")
    return json.loads(path.read_text())


def cell(value, key: str = "") -> str:
    """One table cell: seconds to whole numbers, other floats to two decimals, {mean, sd} as 'mean ± sd'."""
    if isinstance(value, Mapping) and {"mean", "sd"} <= set(value):
        return f"{value['mean']:.2f} ± {value['sd']:.2f}"
    if isinstance(value, float):
        return f"{value:.0f}" if key.endswith("_s") or key.endswith("seconds") else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return " ".join(cell(v, key) for v in value)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Rows as aligned text: the first column left-aligned, the others right-aligned (no pandas needed)."""
    text = [[str(h) for h in header]] + [[v if isinstance(v, str) else cell(v) for v in row] for row in rows]
    if any(len(row) != len(header) for row in text):
        raise ValueError("every row needs one value per header column")
    widths = [max(len(row[i]) for row in text) for i in range(len(header))]
    numeric = [i > 0 and all(_is_number(row[i]) for row in text[1:]) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
             for row in text]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ± ")[0])
    except ValueError:
        return text == "-"
    return True


def _path(path: str) -> str:
    """A record path as the repository names it (``experiments/...``), not as one machine did."""
    return path[path.index("experiments/"):] if Path(path).is_absolute() and "experiments/" in path else path


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" if "," in n else n for n in names)


def _named(names: Sequence[str], every: Sequence[str]) -> str:
    """Rows by name, or 'every row (but ...)' where they are most of ``every`` (row names may be 'direction/row')."""
    if set(names) == set(every):
        return "every row"
    out = []
    for prefix in dict.fromkeys(n.split("/")[0] if "/" in n else "" for n in names):
        mine = [n for n in names if n.startswith(prefix + "/")] if prefix else [n for n in names if "/" not in n]
        of = [n for n in every if n.startswith(prefix + "/")] if prefix else [n for n in every if "/" not in n]
        missing = [n.split("/")[-1] for n in of if n not in mine]
        where = f"{prefix} " if prefix else ""
        out.append(f"every {where}row" if not missing else
                   f"every {where}row but {_quoted(missing)}" if len(missing) <= min(3, len(mine) - 1) else
                   _quoted(mine))
    return "; ".join(out)


def _rows_text(rows: Mapping[str, Sequence[str]], every: Sequence[str]) -> str:
    """Which (row, seeds) a run contributed, grouped by seeds: 'seeds 0 1 2: every row but fl'."""
    groups: dict[tuple, list[str]] = {}
    for row, seeds in rows.items():
        groups.setdefault(tuple(sorted(seeds, key=int)), []).append(row)
    return "; ".join(f"seed{'s' if len(seeds) > 1 else ''} {' '.join(seeds)} of {_named(names, every)}"
                     for seeds, names in groups.items())


def commands(record: Mapping) -> list[tuple[str, str]]:
    """Every command behind ``record``, in the order they ran, with what each contributed: ``[(command, what)]``.

    A run continued with ``--resume`` or combined with ``--merge`` lists, in
    ``metrics.taken_rows``, the records whose rows it kept and the commands that made them;
    a cumulative record (``experiments/recipe.py``) lists every command in ``commands``.
    """
    if "commands" in record:
        return [(c, "added its runs to the record") for c in record["commands"]]
    merged: dict[tuple, dict] = {}  # one entry per (flag, record, command), rows united
    for entry in record["metrics"].get("taken_rows", []):
        key = (entry["flag"], entry["record"], entry["command"])
        for row, seeds in entry["rows"].items():
            merged.setdefault(key, {}).setdefault(row, set()).update(seeds)
    runs = record["metrics"].get("runs", {})
    out, taken = [], set()
    for (flag, path, command), rows in merged.items():
        taken |= {(row, seed) for row, seeds in rows.items() for seed in seeds}
        made = "" if command is None else f"wrote {_path(path)}; "
        out.append((command or "(not stored: an earlier run of the record's own command, stopped part way)",
                    f"{made}kept with {flag}: {_rows_text(rows, list(runs))}"))
    every = {(row, seed) for row, seeds in runs.items() for seed in seeds} if isinstance(runs, Mapping) else set()
    if every and every <= taken:
        what = "combined the rows above into this record, training none itself"
    elif "--merge" in record["command"] and not taken:
        what = "wrote this record; rows of an earlier run of the same setup were kept (the record does not say which)"
    elif taken:
        what = "trained the rows not kept above and wrote this record"
    else:
        what = "trained every row and wrote this record" if every else "ran the experiment and wrote this record"
    return out + [(record["command"], what)]


# Flags that only stitched runs together or reused one (remake() drops them).
STITCHING = ("--resume", "--merge", "--out", "--save-models", "--fpnbook-run", "--seeds", "--seed")


def remake(record: Mapping, name: str) -> str | None:
    """One command that makes record ``NAME`` again, every row and seed in one process.

    The record's own command without :data:`STITCHING` (``--fpnbook-run`` reused a
    training run that the experiment otherwise makes itself), with the record's seed(s), its
    ``--init`` and, where ``name`` is not the experiment's default file,
    ``--out experiments/results/NAME.json``. ``None`` for a cumulative record (the
    recipe's: every command of :func:`commands` added runs).
    """
    if "commands" in record:
        return None
    kept, skipping = [], False
    for word in record["command"].split():
        if word.startswith("--"):
            skipping = word in STITCHING
        if not skipping:
            kept.append(word)
    if record["metrics"].get("setup", {}).get("init") == "scratch" and "--init" not in kept:
        kept += ["--init", "scratch"]
    kept += ["--seeds", *map(str, record["seeds"])] if "seeds" in record else ["--seed", str(record["seed"])]
    if name != record["experiment"]:
        kept += ["--out", f"experiments/results/{name}.json"]
    return " ".join(kept)


def evaluation_split(record: Mapping) -> str:
    """Where the record's numbers were scored: generator seed and size, as the record states them."""
    metrics = record["metrics"]
    if "eval_split" in metrics.get("setup", {}):
        return metrics["setup"]["eval_split"]
    if "decision_split" in metrics:
        split = metrics["decision_split"]
        return f"generated decision split, {split['images']} images of {split['image_size']} px, seed {split['seed']}"
    return "the committed validation split, data/val.json"


def facts(record: Mapping) -> list[tuple[str, str]]:
    """What made ``record``: experiment, versions, machine, seeds, splits, times and note, as (label, value)."""
    metrics = record["metrics"]
    setup = metrics.get("setup", {})
    runs = metrics.get("runs")
    seeds = sorted({r["seed"] for r in runs}) if isinstance(runs, list) else record.get("seeds", [record["seed"]])
    out = [("experiment", f"experiments/{record['experiment']}.py"),
           ("versions", f"fpnbook {record['fpnbook_version']}, torch {record['torch_version']}"),
           ("machine", record["hardware"]),
           ("seeds", " ".join(map(str, seeds))),
           ("scored on", evaluation_split(record))]
    if "train_split" in setup:
        out.append(("trained on", setup["train_split"]))
    wall = record["wall_time_s"]
    out.append(("wall time of the last command", f"{wall / 60:.1f} min" if wall >= 60 else f"{wall:.1f} s"))
    if "train_s_all_rows" in record:
        minutes = record["train_s_all_rows"] / 60
        out.append(("training time of all rows", f"{minutes:.1f} min, one thread, scoring aside"))
    for stage, directions in record.get("wall_time_s_of_merged_runs", {}).items():
        out.append((f"wall time, {stage}", ", ".join(f"{d} {s / 60:.1f} min" for d, s in directions.items())))
    out += [("note", note) for note in (record.get("note"), metrics.get("note")) if note]
    return out


def per_seed(record: Mapping, columns: Sequence[str] | None = None,
             rows: Sequence[str] | None = None) -> tuple[list[str], list[list]]:
    """Every seed of every row: ``(header, rows)``, one line per (row, seed), the ``columns`` of :data:`COLUMNS`.

    Records without seeded rows get their own: the recipe's runs (COCO AP as fractions, as
    the record keeps them) and the torchvision comparison's two models.
    """
    metrics = record["metrics"]
    if "val" in metrics:  # experiments/torchvision_compare.py: one run per library, same seed
        return (["model", "box AP", "mask AP", "train_s", "train img/s", "inference img/s"],
                [[m, f"{metrics['val'][m]['bbox']['AP']:.4f}", f"{metrics['val'][m]['segm']['AP']:.4f}",
                  cell(metrics["train_seconds"][m], "train_s"), *(f"{metrics['throughput'][m][k]:.3f}" for k in
                                                                 ("train_images_per_s", "inference_images_per_s"))]
                 for m in metrics["val"]])
    runs = metrics["runs"]
    if not isinstance(runs, Mapping):  # a list of runs, each naming its variant and seed (experiments/recipe.py)
        return (["variant", "seed", "box AP", "mask AP", "s/step", "train_s"],
                [[r["variant"], r["seed"], f"{r['bbox']['AP']:.4f}", f"{r['segm']['AP']:.4f}",
                  f"{r['seconds_per_step']:.2f}", cell(r["train_seconds"], "train_s")] for r in runs])
    columns = list(columns or COLUMNS[record["experiment"]])
    return ["row", "seed", *columns], [[row, seed, *(cell(values[k], k) for k in columns)]
                                       for row in (rows or runs)
                                       for seed, values in sorted(runs[row].items(), key=lambda s: int(s[0]))]


def summary(record: Mapping, rows: Sequence[str], columns: Sequence[str]) -> tuple[list[str], list[list]]:
    """Mean ± sd over the seeds, from the record's ``metrics.summary``: ``(header, rows)``."""
    stats = record["metrics"]["summary"]
    return ["row", *columns], [[row, *(stats[row][k] for k in columns)] for row in rows]


def claims(record: Mapping) -> list[dict]:
    """The record's paired verdicts, one shape for every record: claim, verdict, mean, se, per-seed differences."""
    metrics = record["metrics"]
    if "sigmoid_minus_softmax" in metrics:  # Table 2b keeps one verdict per metric
        return [{"claim": f"sigmoid beats softmax ({m})", **v} for m, v in metrics["sigmoid_minus_softmax"].items()]
    return [{"claim": c.get("claim") or f"{c['better']} beats {c['worse']} ({c['metric']})", **c}
            for c in metrics.get("claims", [])]


def verdicts(found: Sequence[Mapping]) -> tuple[list[str], list[list]]:
    """Paired verdicts as ``(header, rows)``: the per-seed differences behind each."""
    return (["claim", "verdict", "mean", "se", "per seed"],
            [[c["claim"], c["verdict"], f"{c['mean']:+.2f}", c["se"], " ".join(f"{d:+.2f}" for d in c["diffs"])]
             for c in found])


def lse_ablations(record: Mapping, metric: str) -> list[dict]:
    """:data:`LSE_ABLATIONS` in both directions, each a paired verdict over the record's seeds."""
    runs, seeds = record["metrics"]["runs"], record["seeds"]
    return [{"claim": f"{claim} ({d})", **compare(runs, seeds, f"{d}/{better}", f"{d}/{worse}", metric)}
            for claim, better, worse in LSE_ABLATIONS for d in record["metrics"]["directions"]]


def lse_drift(record: Mapping) -> tuple[tuple[list[str], list[list]], list[dict]]:
    """The joint rows' drift of the box weights (mean ± sd; seen rows A, unseen rows B), and both verdicts."""
    drift = record["metrics"]["drift"]
    rows = [[row, stats["omega_drift_A"], stats["omega_drift_B"]] for row, stats in drift["summary"].items()]
    found = [{"claim": f"{label} ({d})", **drift[key][d]}
             for key, label in (("stop_gradient_holds_A", "stop-gradient keeps the seen rows closer"),
                                ("stop_gradient_keeps_A_and_B_alike", "stop-gradient keeps seen and unseen alike"))
             for d in record["metrics"]["directions"]]
    return (["row", "seen rows moved", "unseen rows moved"], rows), found


def side_by_side(records: Mapping[str, Mapping], rows: Sequence[str], columns: Sequence[str]) -> tuple[list, list]:
    """The same rows of several records, one line per (row, record label): mean ± sd of ``columns``."""
    return ["row", "record", *columns], [[row, label, *(r["metrics"]["summary"][row][key] for key in columns)]
                                         for row in rows for label, r in records.items()]


def smoke_command(record: Mapping) -> str:
    """The command that runs every code path of ``record``'s experiment on a handful of images, leaving it alone."""
    name = record["experiment"]
    scratch = " --init scratch" if record["metrics"].get("setup", {}).get("init") == "scratch" else ""
    return f"python -m experiments.{name} --smoke{scratch} --out /tmp/{name}.json"


def report(record: Mapping, rows: Sequence[str] | None = None, name: str | None = None) -> str:
    """Everything appendix B prints for one record: facts, commands, per-seed rows (of ``rows``) and verdicts.

    With ``name`` (the record's file stem), first the command of :func:`remake` that makes it again.
    """
    found = facts(record)
    width = max(len(label) for label, _ in found)
    again = remake(record, name) if name else None
    parts = [] if name is None else [f"to make it again: {again or 'the commands below, in the order they ran'}", ""]
    parts += [textwrap.fill(value, 110, initial_indent=f"{label:<{width}}  ", subsequent_indent=" " * (width + 2))
              for label, value in found]
    parts += ["", "commands, in the order they ran (from the repository root):"]
    parts += [f"  {command}\n" + textwrap.fill(what, 110, initial_indent="      -> ", subsequent_indent=" " * 9)
              for command, what in commands(record)]
    header, rows = per_seed(record, rows=rows)
    parts += ["", f"smoke run (a few steps on a handful of images): {smoke_command(record)}", "",
              "per seed:" if "seed" in header else "per model:", table(header, rows)]
    found = claims(record)
    if found:
        parts += ["", "paired verdicts, from the record:", table(*verdicts(found))]
    return "\n".join(parts)


def cards(path: Path = CHECKPOINTS / "cards.json") -> dict:
    """The shipped checkpoints' cards (``checkpoints/cards.json``, also rendered as ``checkpoints/NAME.md``)."""
    return json.loads(Path(path).read_text())


def cards_table(found: Mapping[str, Mapping]) -> tuple[list[str], list[list]]:
    """One line per checkpoint: steps, seed, training minutes, and COCO AP on the committed validation split."""
    rows = []
    for name, card in found.items():
        val = card.get("val") or {}
        rows.append([card["file"], card["steps"], card.get("seed", "-"), f"{card['train_seconds'] / 60:.0f}",
                     *(f"{val[t]['AP']:.3f}" if t in val else "-" for t in ("bbox", "segm"))])
    return ["file", "steps", "seed", "train min", "box AP", "mask AP"], rows


def check(record: Mapping) -> int:
    """Assert that ``record`` is a full run whose summary and verdicts follow from its per-seed rows.

    Every row has every seed; every mean ± sd is that of the per-seed values; every verdict
    naming its two rows is :func:`experiments.common.compare` of them. Returns how many
    numbers were recomputed. Records without seeded rows only get the first check.
    """
    from experiments.common import mean_sd

    if record["smoke"]:
        raise AssertionError(f"{record['experiment']}: a smoke record, not a full run")
    metrics = record["metrics"]
    runs, seeds = metrics.get("runs"), [str(s) for s in record.get("seeds", [])]
    if not isinstance(runs, Mapping) or not seeds:
        return 0
    checked = 0
    for row, by_seed in runs.items():
        if sorted(by_seed, key=int) != seeds:
            raise AssertionError(f"{row} has seeds {sorted(by_seed)}, the record {seeds}")
        for key, stats in metrics["summary"][row].items():
            if mean_sd(by_seed[s][key] for s in seeds) != stats:
                raise AssertionError(f"{row} {key}: the summary {stats} is not the seeds' mean ± sd")
            checked += 2
    paired = [(c["better"], c["worse"], c["metric"], c) for c in metrics.get("claims", []) if "better" in c]
    paired += [("sigmoid", "softmax", m, v) for m, v in metrics.get("sigmoid_minus_softmax", {}).items()]
    for better, worse, metric, verdict in paired:
        again = compare(runs, [int(s) for s in seeds], better, worse, metric)
        if any(verdict[k] != again[k] for k in again):
            raise AssertionError(f"{better} vs {worse} ({metric}): {verdict} is not {again}")
        checked += len(again["diffs"]) + 1
    return checked
