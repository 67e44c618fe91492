"""Problem sizes: named presets and `B,T,I,H` strings (batch, time steps, input, hidden).

    >>> parse_sizes(["S1", "8,50,64,128"])
    [Size(name='S1', batch=1, time=100, input=32, hidden=64),
     Size(name='8,50,64,128', batch=8, time=50, input=64, hidden=128)]
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    time: int
    input: int
    hidden: int

    @property
    def label(self):
        return f"B{self.batch} T{self.time} I{self.input} H{self.hidden}"

    def as_dict(self):
        return {"name": self.name, "batch": self.batch, "time": self.time,
                "input": self.input, "hidden": self.hidden}


PRESETS = {
    "S0": Size("S0", 2, 8, 4, 8),  # tiny: tests and smoke runs
    "S1": Size("S1", 1, 100, 32, 64),  # latency: one sequence, small cell
    "S2": Size("S2", 1, 100, 128, 256),  # latency: one sequence, mid cell
    "S3": Size("S3", 32, 100, 128, 256),  # throughput: a batch, mid cell
    "S4": Size("S4", 256, 50, 256, 512),  # throughput: big batch, big cell
}
DEFAULT_SIZES = ("S1", "S2", "S3")
QUICK_SIZES = ("S1",)


def parse_size(text):
    """One size: a preset name (`S1`) or four positive integers `B,T,I,H`."""
    if not isinstance(text, str):
        raise ValueError(f"A size is a string. Received: {text!r}")
    stripped = text.strip()
    if stripped.upper() in PRESETS:
        return PRESETS[stripped.upper()]
    parts = [part.strip() for part in stripped.replace("x", ",").split(",")]
    if len(parts) != 4 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"Bad size {text!r}: expected a preset ({', '.join(PRESETS)}) or four "
            "positive integers B,T,I,H (batch, time steps, input features, hidden units), "
            "e.g. 8,50,64,128."
        )
    batch, time, features, hidden = (int(part) for part in parts)
    return Size(",".join(parts), batch, time, features, hidden)


def parse_sizes(texts):
    """A list of sizes; each item may itself hold several sizes separated by spaces or
    semicolons (`"S1;S2"`). Duplicates are dropped, order kept."""
    sizes = []
    for text in texts:
        for item in str(text).replace(";", " ").split():
            size = parse_size(item)
            if size not in sizes:
                sizes.append(size)
    if not sizes:
        raise ValueError(f"No sizes given. Received: {list(texts)!r}")
    return sizes
