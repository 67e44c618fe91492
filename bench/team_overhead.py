"""What a team of threads costs per call and per step (kernels/cpu/team.py).

    python -m bench.team_overhead [--repeats N] [--steps 1,10,100,1000] [--hidden 256]
                                  [--python-members]

The compiled IR program of a float32 LSTM (batch 1, 128 input features) is called
with `team_size=2` and `team_size=1` at each sequence length; medians of
interleaved samples (bench.cpu_kernels._median_times: idle, warm calls, then timed
calls). A one-step call shows the fixed cost of handing a call to the other member
and back; long sequences show the per-step cost. Outputs of the two modes are
compared (max-abs <= 1e-5) before timing. `--python-members` starts the team's other
member with a Python thread (team_workers.py) instead of the kernel module's native
launcher (team_launch.py), to compare the two.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import rshop_ir  # noqa: E402
from bench.cpu_kernels import _median_times  # noqa: E402
from rshop_ir import examples  # noqa: E402

INPUT_FEATURES = 128


def measure(steps_list, hidden, repeats):
    program = examples.lstm_program(INPUT_FEATURES, hidden, "float32")
    compiled = rshop_ir.compile(program, target="cpu",
                                weights=examples.random_weights(program))
    rng = np.random.default_rng(0)
    rows = []
    for steps in steps_list:
        x = rng.standard_normal((1, steps, INPUT_FEATURES)).astype(np.float32)
        team, single = compiled(x, team_size=2), compiled(x, team_size=1)
        error = max(float(np.max(np.abs(a - b))) for a, b in zip(team, single))
        if error > 1e-5:
            raise AssertionError(f"team and one thread differ by {error} at T={steps}")
        times = _median_times({"team": lambda: compiled(x, team_size=2),
                               "one": lambda: compiled(x, team_size=1)}, repeats)
        rows.append((steps, times["team"], times["one"]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", default="1,10,100,1000")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--python-members", action="store_true",
                        help="start the other member with a Python thread")
    args = parser.parse_args(argv)
    if args.python_members:
        from rshop_ir.kernels.cpu import runtime
        runtime.native_launch_usable = lambda members: False
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    launcher = "Python member threads" if args.python_members else "native launcher"
    print(f"LSTM batch 1, input {INPUT_FEATURES}, hidden {args.hidden}, float32; "
          f"team started by the {launcher} where usable")
    print(f"{'T':>6} {'team us':>10} {'one thread us':>14} {'team us/step':>13} "
          f"{'one us/step':>12} {'one / team':>11}")
    for steps, team, single in measure([int(s) for s in args.steps.split(",")],
                                       args.hidden, args.repeats):
        print(f"{steps:6d} {team * 1e6:10.1f} {single * 1e6:14.1f} "
              f"{team * 1e6 / steps:13.2f} {single * 1e6 / steps:12.2f} "
              f"{single / team:11.2f}")


if __name__ == "__main__":
    main()
