"""What every experiment shares: its command line, its record, and where the record goes.

An experiment is a module with ``run(args) -> dict`` (its metrics) and a ``main``
built by :func:`main`. A full run writes ``experiments/results/NAME.json``, which is
committed and plotted by a chapter; ``--smoke`` runs a few steps and writes to a
temporary folder (or ``--out``), so a test or a chapter can run it without touching
the committed results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

import fpnbook
from fpnbook.files import atomic_write_text
from fpnbook.train import TrainConfig, hardware

RESULTS = Path(__file__).resolve().parent / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every experiment takes; an experiment adds its own."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--smoke", action="store_true", help="a few steps on a few images, to show the script works")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: experiments/results/NAME.json, "
                                                          "or a temporary file with --smoke)")
    return p


def seeded_parser(name: str, description: str, iterations: int) -> argparse.ArgumentParser:
    """:func:`parser` plus what every seeded table takes: seeds, schedule, evaluation split, init, resume."""
    p = parser(name, description)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="each seed trains every row")
    p.add_argument("--iterations", type=int, default=iterations)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-images", type=int, default=256, help="size of the generated evaluation split")
    p.add_argument("--init", choices=("backbone", "scratch"), default="backbone",
                   help="start the body from checkpoints/backbone.pt, or from random weights")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of the partial record a stopped run of the same setup left, and run the rest")
    p.add_argument("--merge", nargs="+", type=Path, default=[], metavar="RECORD",
                   help="also keep the rows of these records (full or partial) of the same setup, e.g. from runs "
                        "of other --seeds or --variants in parallel")
    return p


def result_path(name: str, args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix=f"fpnbook-{name}-")) / f"{name}.json"
    return RESULTS / f"{name}.json"


def write_record(path: Path, record: dict) -> None:
    """Write the JSON atomically: a run stopped half way leaves the previous results intact."""
    atomic_write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", path)


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t:`` ... then ``t["wall_s"]`` and ``t["cpu_s"]`` (this process), rounded to 0.1 s."""
    times: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield times
    times["wall_s"] = round(time.perf_counter() - wall, 1)
    times["cpu_s"] = round(time.process_time() - cpu, 1)


def mean_sd(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    """``{"mean", "sd"}`` of per-seed values (sd 0 for a single seed), rounded."""
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), digits), "sd": round(sd, digits)}


def paired_verdict(better: Sequence[float], worse: Sequence[float], digits: int = 2) -> dict:
    """Whether the paper's ordering "``better`` beats ``worse``" holds, from per-seed paired values.

    Seed ``i`` of both lists shares its initial weights and data. The per-seed differences
    ``better[i] - worse[i]`` decide: "reproduced" when every one is positive or their mean
    exceeds twice its standard error; "did not reproduce" when the same holds the other way
    round; "inconclusive" otherwise. Returns the differences, their mean, sd, standard error
    and the verdict.
    """
    diffs = [b - w for b, w in zip(better, worse, strict=True)]
    if not diffs:
        raise ValueError("paired_verdict needs at least one seed")
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    se = sd / math.sqrt(len(diffs))
    if all(d > 0 for d in diffs) or (len(diffs) > 1 and mean > 2 * se):
        verdict = "reproduced"
    elif all(d < 0 for d in diffs) or (len(diffs) > 1 and mean < -2 * se):
        verdict = "did not reproduce"
    else:
        verdict = "inconclusive"
    return {"diffs": [round(d, digits) for d in diffs], "mean": round(mean, digits), "sd": round(sd, digits),
            "se": round(se, digits), "verdict": verdict}


def summarise(runs: dict, seeds: Sequence[int], metrics: Sequence[str]) -> dict:
    """``{variant: {metric: mean_sd}}`` over the seeds of ``runs[variant][str(seed)][metric]``."""
    return {variant: {m: mean_sd(rows[str(s)][m] for s in seeds) for m in metrics} for variant, rows in runs.items()}


def compare(runs: dict, seeds: Sequence[int], better: str, worse: str, metric: str) -> dict:
    """:func:`paired_verdict` of "``better`` beats ``worse`` on ``metric``", seed by seed, from ``runs``."""
    return paired_verdict([runs[better][str(s)][metric] for s in seeds], [runs[worse][str(s)][metric] for s in seeds])


def ordering_claims(runs: dict, seeds: Sequence[int], claims: Sequence[tuple[str, str, str]], paper: dict) -> list[dict]:
    """For each ``(better, worse, metric)`` of ``claims`` whose rows both ran: the paper's gap and our :func:`compare`."""
    return [{"better": better, "worse": worse, "metric": metric,
             "paper_gap": round(paper[better][metric] - paper[worse][metric], 2),
             **compare(runs, seeds, better, worse, metric)}
            for better, worse, metric in claims if better in runs and worse in runs]


def main(name: str, run: Callable[[argparse.Namespace], dict], build_parser: Callable[[], argparse.ArgumentParser],
         argv: list[str] | None = None, cumulative: bool = False,
         extra: Callable[[argparse.Namespace, dict], dict] | None = None) -> dict:
    """Parse arguments, seed, time ``run(args)``, and write its record. Returns the record.

    ``extra(args, metrics)``: more top-level fields of the record.
    ``cumulative``: the experiment adds to the record already at its path (as
    ``experiments/recipe.py`` does), so the record keeps that record's ``commands`` (every
    command that wrote to it, this one appended) and its ``note``.
    """
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    metrics = run(args)
    argv = sys.argv[1:] if argv is None else argv
    record = {
        "experiment": name,
        "command": " ".join(["python -m", f"experiments.{name}", *argv]),
        "seed": args.seed,
        "smoke": args.smoke,
        "fpnbook_version": fpnbook.__version__,
        "torch_version": torch.__version__,
        "hardware": hardware(),
        "wall_time_s": round(time.perf_counter() - start, 1),
        **(extra(args, metrics) if extra is not None else {}),
        "metrics": metrics,
    }
    path = result_path(name, args)
    if cumulative and path.exists() and not args.smoke:
        previous = json.loads(path.read_text())
        record["commands"] = previous.get("commands", [previous.get("command")]) + [record["command"]]
        if previous.get("note"):
            record["note"] = previous["note"]
    write_record(path, record)
    print(f"wrote {path}")
    return record


def write_partial(name: str, args: argparse.Namespace, metrics: dict) -> None:
    """Keep what has finished in ``NAME.partial.json``, so a run stopped half way still leaves its first rows."""
    write_record(result_path(name, args).with_suffix(".partial.json"),
                 {"experiment": name, "partial": True, "smoke": args.smoke, "metrics": metrics})


def pending(runs: dict, seeds: Sequence[int], rows: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(seed, row)`` in training order, seed by seed, skipping those ``runs`` already holds (resumed or merged)."""
    for seed in seeds:
        for row in rows:
            if str(seed) not in runs[row]:
                yield seed, row


def table_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The book's default recipe for one seed of a table: ``--iterations`` of ``--batch-size``, on the CPU."""
    return TrainConfig(iterations=args.iterations, batch_size=args.batch_size, seed=seed,
                       warmup_iters=min(100, args.iterations // 5), device="cpu",
                       log_every=max(1, args.iterations // 10), progress=not args.smoke)


def fill_missing(into: dict, key: str, value) -> None:
    """``into[key] = value`` unless ``into`` has ``key``; where both are dicts, fill it key by key, so that
    per-seed entries (e.g. ``stages[seed][direction]``) of records made by other processes add up."""
    if key not in into:
        into[key] = value
    elif isinstance(into[key], dict) and isinstance(value, dict):
        for inner, item in value.items():
            fill_missing(into[key], inner, item)


def take_rows(path: Path, metrics: dict, flag: str) -> None:
    """Copy into ``metrics["runs"]`` the rows of the record at ``path``, which must share ``metrics["setup"]``."""
    if not path.exists():
        raise FileNotFoundError(f"{flag}: there is no record at {path}")
    try:
        record = json.loads(path.read_text())
        previous = record["metrics"]
        previous["runs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{flag}: {path} is not an experiment record with metrics.runs") from None
    if previous.get("setup") != metrics["setup"]:
        raise ValueError(f"{flag}: {path} was made with another setup ({previous.get('setup')}), "
                         f"not this one ({metrics['setup']})")
    taken = {row: sorted(seeds) for row, seeds in previous["runs"].items() if row in metrics["runs"] and seeds}
    for row in taken:
        metrics["runs"][row].update(previous["runs"][row])
    for key, value in previous.items():  # what the loop adds beside the rows (e.g. the logged steps)
        if key not in ("runs", "summary", "claims", "taken_rows"):
            fill_missing(metrics, key, value)
    # Where each kept row came from: the record, and the command that made it (a partial record has none).
    history = metrics.setdefault("taken_rows", [])
    history.extend(entry for entry in previous.get("taken_rows", []) if entry not in history)
    history.append({"flag": flag, "record": str(path), "command": record.get("command"), "rows": taken})


def resume_runs(name: str, args: argparse.Namespace, metrics: dict) -> None:
    """Fill ``metrics["runs"]`` with rows already trained, so that ``run`` trains only the others.

    ``--resume``: the rows of the partial record a stopped run left; ``--merge``: the rows of
    other records (runs of other seeds or rows in parallel). Every one must come from the
    same setup (``metrics["setup"]``), else ValueError: rows trained differently must not be
    mixed into one table.
    """
    if getattr(args, "resume", False):
        path = result_path(name, args).with_suffix(".partial.json")
        if not path.exists():
            raise FileNotFoundError(f"--resume: there is no partial record at {path} (run without --resume)")
        take_rows(path, metrics, "--resume")
    for path in getattr(args, "merge", []):
        take_rows(Path(path), metrics, "--merge")
    done = sum(len(seeds) for seeds in metrics["runs"].values())
    if done:
        print(f"kept {done} finished runs", flush=True)


def total_train_s(metrics: dict) -> float:
    """Training seconds of every (row, seed) of a seeded table's metrics, whichever process ran it."""
    return round(sum(row.get("train_s", 0.0) for seeds in metrics["runs"].values() for row in seeds.values()), 1)


def main_seeded(name: str, run: Callable[[argparse.Namespace], dict],
                build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> dict:
    """:func:`main` for an experiment run over ``--seeds`` and scored on ``--eval-images`` images.

    Both go to the record's top level (``seeds``, ``eval_images``); the partial record that
    ``run`` kept with :func:`write_partial` is removed once the full one is written.
    """
    args = build_parser().parse_args(argv)
    # train_s_all_rows: what the table cost to train, also when --resume or --merge brought rows in
    record = main(name, run, build_parser, argv,
                  extra=lambda a, metrics: {"seeds": a.seeds, "eval_images": a.eval_images,
                                            "train_s_all_rows": total_train_s(metrics)})
    if not args.smoke or args.out is not None:  # the full record is written: the partial one is stale
        result_path(name, args).with_suffix(".partial.json").unlink(missing_ok=True)
    return record
