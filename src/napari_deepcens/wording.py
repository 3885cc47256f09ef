"""How counts of objects are said to users: "1 nucleus, 28 nuclei, 28 cells", not
"28 nucleus, 28 cell" (class names are singular in weights and files)."""

from __future__ import annotations

from collections.abc import Mapping

#: Plurals English does not form with an "s".
IRREGULAR = {"nucleus": "nuclei", "nucleolus": "nucleoli", "mitochondrion": "mitochondria",
             "bacterium": "bacteria", "cytoplasm": "cytoplasms"}


def count_of(n: int, name: str) -> str:
    """``n`` objects of class ``name``, the noun agreeing with the number."""
    if n == 1 or not name:
        return f"{n} {name}".rstrip()
    lower = name.lower()
    if lower in IRREGULAR:
        plural = IRREGULAR[lower]
        plural = plural.capitalize() if name[0].isupper() else plural
    elif lower.endswith("is"):  # mitosis, apoptosis
        plural = name[:-2] + "es"
    elif lower.endswith(("s", "x", "ch", "sh")):
        plural = name + "es" if not lower.endswith("es") else name
    else:
        plural = name + "s"
    return f"{n} {plural}"


def counts_of(counts: Mapping[str, int]) -> str:
    """Several classes' counts, in order: ``"28 nuclei, 28 cells"``."""
    return ", ".join(count_of(int(n), name) for name, n in counts.items())
