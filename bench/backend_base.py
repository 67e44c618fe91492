"""What a backend is: a name, a kind, an availability check and `prepare(case)`.

`prepare(case, settings)` builds (compiles) the backend's version of `case` and returns
a callable taking the case's numpy inputs positionally and returning numpy output(s).
It raises `NotApplicable` when the backend has no version of this case (e.g. torch and a
custom step model); any other exception is recorded as an error of that backend.
"""

from dataclasses import dataclass

KINDS = ("reference", "ours", "peer")


class NotApplicable(Exception):
    """The backend has no equivalent of this case; the row is reported as n/a."""


class Backend:
    name = "abstract"
    kind = "peer"  # "reference" (the baseline), "ours" (rshop_ir) or "peer"

    def availability(self):
        """None when usable here, else a note saying why it is skipped."""
        return None

    def prepare(self, case, settings):
        raise NotImplementedError


@dataclass
class RunSettings:
    repeat: int = 10  # timed samples per backend (the median is reported)
    warmup: int = 2  # untimed calls after the first (compile) call
    min_sample_s: float = 0.02  # each sample loops the call until it lasts this long
    max_calls_per_sample: int = 200
    # Before each sample: `quiet_s` idle, then untimed calls for `warm_s` (at least
    # one). Another library's thread pool keeps spinning after its last call (ONNX
    # Runtime's for ~40 ms, measured on the 2-core development machine) and would
    # take a core from whichever backend is timed next; the untimed calls wake the
    # sampled backend's own threads and idle cores again, as in steady use (after
    # the idle, ONNX Runtime's first ~50 calls at S1 ran 1.6x slower).
    quiet_s: float = 0.06
    warm_s: float = 0.01
    tolerance: float = 1e-4  # max-abs difference from the reference (float32)
    threads: int = None  # None: each library's default
    seed: int = 0
