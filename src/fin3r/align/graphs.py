"""Pair graphs: which ordered image pairs a pairwise model (DUSt3R, MASt3R) is run on.

The names are those of DUSt3R's ``make_pairs`` (``scene_graph``):

- ``complete``: every pair;
- ``swin-K`` (default K = 3): each image with the next K (a sliding window), cyclic -- the last
  images pair with the first ones -- unless the name ends in ``-noncyclic``;
- ``logwin-K`` (default K = 3): each image with the images 1, 2, 4, ..., 2^(K-1) before and after
  it, cyclic unless ``-noncyclic``;
- ``oneref-R`` (default R = 0): every image with the reference image R.

Every unordered pair ``{i, j}`` is used in both orders, ``(i, j)`` and ``(j, i)`` (symmetrised), as
the official global alignment expects: the first image of an ordered pair is the frame its points
are predicted in.
"""

from __future__ import annotations

from fin3r.errors import InputError

__all__ = ["GRAPH_KINDS", "pair_graph", "parse_graph"]

GRAPH_KINDS = ("complete", "swin", "logwin", "oneref")


def parse_graph(name: str) -> tuple[str, int | None, bool]:
    """``name`` -> ``(kind, parameter or None, cyclic)``; an unknown name is an :class:`InputError`."""
    parts = str(name).strip().split("-")
    kind = parts[0]
    if kind not in GRAPH_KINDS:
        raise InputError(f"unknown pair graph {name!r}; expected one of complete, swin[-K][-noncyclic], "
                         f"logwin[-K][-noncyclic], oneref[-R]")
    rest = parts[1:]
    cyclic = True
    if rest and rest[-1] == "noncyclic" and kind in ("swin", "logwin"):
        cyclic = False
        rest = rest[:-1]
    param = None
    if rest:
        if len(rest) != 1 or not rest[0].isdigit() or kind == "complete":
            raise InputError(f"pair graph {name!r}: expected {kind}" + ("" if kind == "complete" else "-<integer>"))
        param = int(rest[0])
    return kind, param, cyclic


def pair_graph(num_images: int, name: str = "complete") -> list[tuple[int, int]]:
    """The ordered pairs ``(i, j)`` of graph ``name`` on ``num_images`` images, both orders of every
    edge, sorted; every image is in at least one pair.

    Raises:
        InputError: fewer than 2 images, an unknown graph, or an ``oneref`` reference out of range.
    """
    n = int(num_images)
    if n < 2:
        raise InputError(f"a pair graph needs at least 2 images, got {n}")
    kind, param, cyclic = parse_graph(name)
    edges: set[tuple[int, int]] = set()

    def add(i: int, j: int) -> None:
        if cyclic:
            j %= n
        if 0 <= j < n and j != i:
            edges.add((min(i, j), max(i, j)))

    if kind == "complete":
        for i in range(n):
            for j in range(i + 1, n):
                edges.add((i, j))
    elif kind == "swin":
        window = 3 if param is None else param
        if window < 1:
            raise InputError(f"pair graph {name!r}: the window must be >= 1")
        for i in range(n):
            for k in range(1, window + 1):
                add(i, i + k)
    elif kind == "logwin":
        window = 3 if param is None else param
        if window < 1:
            raise InputError(f"pair graph {name!r}: the window must be >= 1")
        for i in range(n):
            for k in range(window):
                add(i, i + 2**k)
                add(i, i - 2**k)
    else:  # oneref
        ref = 0 if param is None else param
        if ref >= n:
            raise InputError(f"pair graph {name!r}: reference image {ref} out of range for {n} images")
        for j in range(n):
            if j != ref:
                edges.add((min(ref, j), max(ref, j)))
    return sorted(edges | {(j, i) for i, j in edges})
