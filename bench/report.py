"""Reporting a run: the console table, the JSON file and the PNG plot.

JSON schema (`"schema": "rshop-bench"`, `"version": 1`):

    {
      "schema": "rshop-bench", "version": 1,
      "created": "2025-01-01T12:00:00+00:00",   # start of the run, UTC, ISO 8601
      "duration_s": 612.3,
      "command": "python -m bench --quick",
      "machine": {"system", "cpu", "cores", "usable_cores", "gpu", "blas": [...],
                  "keras_backend", "versions": {"numpy": "2.4.6", ...}},
      "settings": {"repeat", "warmup", "min_sample_s", "max_calls_per_sample",
                   "tolerance", "threads", "seed", "suites", "models", "sizes",
                   "backends", "thread_notes"},
      "results": [                              # one per model x size x backend
        {"suite", "model", "size": {"name", "batch", "time", "input", "hidden"},
         "backend", "kind": "reference" | "ours" | "peer",
         "status": "ok" | "wrong" | "n/a" | "skipped" | "unsupported" | "error",
         "note",                                # why, for every status but ok
         "max_abs_error",                       # vs keras-reference, null if not run
         "first_call_s",                        # build/compile + first call, seconds
         "calls_per_sample", "samples_s": [..], # raw timings: seconds per call
         "median_s", "ms_per_call", "ms_per_step",
         "flops", "gflops",                     # matmul FLOPs of one call
         "speedup_vs_reference", "speedup_vs_best_peer", "best_peer"}
      ]
    }

Ratios are `other_median / this_median` within the same model and size of this run:
above 1 means this backend is faster.
"""

import json
import os
from datetime import datetime, timezone

SCHEMA = "rshop-bench"
VERSION = 1
STATUSES = ("ok", "wrong", "n/a", "skipped", "unsupported", "error")


def build_document(rows, machine, settings, command, started=None):
    """The JSON document; `started`: the run's start (a UTC datetime), default now."""
    started = started or datetime.now(timezone.utc)
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "created": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "command": command,
        "machine": machine,
        "settings": settings,
        "results": rows,
    }


def write_json(document, path):
    _make_parent(path)
    with open(path, "w") as handle:
        json.dump(document, handle, indent=1, allow_nan=False)
    return path


def _make_parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


# ------------------------------------------------------------------ table
COLUMNS = ("model", "size", "backend", "ms/call", "ms/step", "first call s",
           "x vs ref", "x vs best peer", "GFLOP/s", "max err")


def _number(value, digits=2):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def table_rows(rows):
    """The displayed rows: every backend that ran (ok, wrong, error); n/a and skipped
    rows are summarised in `notes` instead."""
    shown = []
    for row in rows:
        if row["status"] in ("n/a", "skipped"):
            continue
        size = row["size"]
        if row["status"] == "ok":
            cells = (_number(row["ms_per_call"], 3), _number(row["ms_per_step"], 4),
                     _number(row["first_call_s"]),
                     _number(row["speedup_vs_reference"]),
                     _number(row["speedup_vs_best_peer"]), _number(row["gflops"]),
                     f"{row['max_abs_error']:.1e}")
        else:
            status = row["status"].upper()
            cells = (status, "-", _number(row["first_call_s"]), "-", "-", "-",
                     "-" if row["max_abs_error"] is None else f"{row['max_abs_error']:.1e}")
        shown.append((row["model"], f"{size['name']} ({size['batch']},{size['time']},"
                                    f"{size['input']},{size['hidden']})",
                       row["backend"], *cells))
    return shown


def notes(rows):
    """One line per backend that was skipped, n/a, wrong or failed, deduplicated."""
    lines = {}
    for row in rows:
        if row["status"] == "ok":
            continue
        if row["status"] in ("skipped", "n/a"):
            key = (row["backend"], row["status"], row["note"])
            where = row["model"]
        else:
            key = (row["backend"], row["status"], row["note"], row["model"])
            where = f"{row['model']} {row['size']['name']}"
        lines.setdefault(key, []).append(where)
    text = []
    for key, places in lines.items():
        backend, status, note = key[:3]
        places = sorted(set(places), key=places.index)
        text.append(f"{backend} {status} ({', '.join(places)}): {note}")
    return text


def render_table(rows, title=None, console_file=None):
    """Prints the table (rich when installed, plain text otherwise) and the notes."""
    shown = table_rows(rows)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain_table(shown, title), file=console_file)
    else:
        table = Table(title=title, show_lines=False)
        for index, column in enumerate(COLUMNS):
            table.add_column(column, justify="left" if index < 3 else "right")
        previous = None
        for row in shown:
            key = row[:2]
            if previous is not None and key != previous:
                table.add_section()
            previous = key
            table.add_row(*row)
        console = Console(file=console_file)
        if not console.is_terminal:  # a pipe or file: do not squash to 80 columns
            console = Console(file=console_file, width=170)
        console.print(table)
    for line in notes(rows):
        print("  note: " + line, file=console_file)


def plain_table(shown, title=None):
    table = [COLUMNS] + [tuple(row) for row in shown]
    widths = [max(len(str(row[k])) for row in table) for k in range(len(COLUMNS))]
    lines = [title] if title else []
    for index, row in enumerate(table):
        lines.append("  ".join(str(cell).ljust(width) if k < 3 else str(cell).rjust(width)
                               for k, (cell, width) in enumerate(zip(row, widths))))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows):
    """The same table as GitHub markdown (for BENCHMARKS.md)."""
    shown = table_rows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if k < 3 else "---:" for k in range(len(COLUMNS))) + "|"]
    for row in shown:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ plot
def write_plot(rows, path):
    """PNG: one panel per model, time per step (ms, log scale) against the sizes of the
    run, one line per backend that passed the check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    sizes = list(dict.fromkeys(row["size"]["name"] for row in rows))
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    columns = min(3, max(1, len(models)))
    lines = (len(models) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.6 * lines),
                                squeeze=False)
    for index, model in enumerate(models):
        axis = axes[index // columns][index % columns]
        for backend in backends:
            points = [(sizes.index(row["size"]["name"]), row["ms_per_step"]) for row in rows
                      if row["model"] == model and row["backend"] == backend
                      and row["ms_per_step"] is not None]
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", label=backend)
        axis.set_title(model)
        axis.set_xticks(range(len(sizes)))
        axis.set_xticklabels(sizes)
        axis.set_yscale("log")
        axis.set_ylabel("ms per time step")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    for index in range(len(models), lines * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("rshop-bench: median time per step (lower is better)")
    figure.tight_layout()
    _make_parent(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
