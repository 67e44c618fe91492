"""Compare two sets of `python -m bench` runs by pooling their samples.

    python -m bench.pool --before a.json b.json --after c.json d.json \\
        [--backend numba-cpu] [--against keras-xla]

One run on a shared machine can hold a slow sample set of any backend. This pools the
raw per-sample timings (`samples_s`) of every run of a set, per (suite, model, size,
backend), and prints a markdown table: for each case, the medians of the pooled
samples of `--backend` and `--against` in ms and the ratio against / backend (above 1:
the backend is faster), before and after. Alternate the runs of the two sets (before,
after, before, after) so that drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def pooled_samples(paths) -> dict:
    """(suite, model, size name, backend) -> the samples of every ok row, all runs."""
    samples = {}
    for path in paths:
        with open(path) as handle:
            results = json.load(handle)["results"]
        for row in results:
            if row["status"] != "ok":
                continue
            key = (row["suite"], row["model"], row["size"]["name"], row["backend"])
            samples.setdefault(key, []).extend(row["samples_s"])
    return samples


def comparison_rows(before: dict, after: dict, backend: str, against: str) -> list:
    """[(suite, model, size, (backend ms, against ms, ratio) before, ... after)] for
    every case both sets timed with both backends, in the order of `after`."""
    rows = []
    cases = dict.fromkeys(key[:3] for key in after)
    for case in cases:
        cells = []
        for samples in (before, after):
            ours, theirs = samples.get((*case, backend)), samples.get((*case, against))
            if not ours or not theirs:
                break
            ours_ms, theirs_ms = 1e3 * np.median(ours), 1e3 * np.median(theirs)
            cells.append((ours_ms, theirs_ms, theirs_ms / ours_ms))
        if len(cells) == 2:
            rows.append((*case, *cells))
    return rows


def render(rows, backend: str, against: str) -> str:
    header = f"{backend} ms / {against} ms / speed-up"
    lines = [f"| suite | model | size | before: {header} | after: {header} |",
             "|---|---|---|---|---|"]
    for suite, model, size, *cells in rows:
        text = [f"{ours:.3f} / {theirs:.3f} / {ratio:.2f}x" for ours, theirs, ratio in cells]
        lines.append(f"| {suite} | {model} | {size} | {text[0]} | {text[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", nargs="+", required=True, help="JSON files of runs")
    parser.add_argument("--after", nargs="+", required=True, help="JSON files of runs")
    parser.add_argument("--backend", default="numba-cpu")
    parser.add_argument("--against", default="keras-xla")
    args = parser.parse_args(argv)
    try:
        rows = comparison_rows(pooled_samples(args.before), pooled_samples(args.after),
                               args.backend, args.against)
    except (OSError, KeyError, ValueError) as error:
        parser.error(f"cannot read the runs: {error!r}; pass JSON files written by "
                     f"`python -m bench --json FILE`")
    if not rows:
        parser.error(f"no case was timed with both {args.backend!r} and {args.against!r} "
                     f"in both sets of runs")
    print(render(rows, args.backend, args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
