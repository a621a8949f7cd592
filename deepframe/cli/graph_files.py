"""Writing a graph as a file for ``deepframe describe --out``: node-link JSON, GraphML, DOT.

Node-link JSON is deepframe's own format (readable again as ``ARCH``);
GraphML and Graphviz DOT are for graph tools and hold only flat attribute
values (a shape ``(1, 8, 8)`` is written ``"1x8x8"``). Every file is written
atomically (:func:`deepframe._io.atomic_write`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FORMATS", "write_dot", "write_graph"]

#: File suffix -> format of ``--out``.
FORMATS = {".json": "json", ".graphml": "graphml", ".xml": "graphml", ".dot": "dot", ".gv": "dot"}


def _flat_attributes(g):
    """A copy of ``g`` whose attribute values GraphML and DOT can hold (tuples -> "1x8x8")."""
    h = g.copy()
    items = [a for _, a in h.nodes(data=True)] + [a for _, _, a in h.edges(data=True)]
    for attrs in items:
        for key, value in list(attrs.items()):
            if isinstance(value, (tuple, list)):
                sep = "x" if key.endswith("shape") else ","
                attrs[key] = sep.join(str(v) for v in value)
            elif value is None:
                del attrs[key]
            elif not isinstance(value, (bool, int, float, str)):
                attrs[key] = str(value)
    return h


def _dot_text(value) -> str:
    """``value`` as the inside of a DOT string (backslashes and quotes escaped)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _dot_id(value) -> str:
    """``value`` as a quoted DOT identifier."""
    return f'"{_dot_text(value)}"'


def write_dot(g, path: Path) -> None:
    """The graph as Graphviz DOT text: one labelled node per activation, one edge per op."""
    from .._io import atomic_write
    from ..ops import DEFAULT_EDGE_KIND

    h = _flat_attributes(g)
    lines = [f"digraph {_dot_id(h.graph.get('name', 'deepframe'))} {{", "  rankdir=LR;"]
    for node, a in h.nodes(data=True):
        lines_ = [str(node), str(a.get("shape", ""))]
        extra = " ".join(f"{k}={a[k]}" for k in ("merge", "op", "bias") if a.get(k))
        label = "\\n".join(_dot_text(t) for t in (*lines_, extra) if t)
        shape = "box" if a.get("kind") == "input" else "ellipse"
        lines.append(f'  {_dot_id(node)} [shape={shape}, label="{label}"];')
    for u, v, a in h.edges(data=True):
        parts = [str(a.get("op", DEFAULT_EDGE_KIND))]
        parts += [
            f"{k}={a[k]}"
            for k in ("kernel_size", "stride", "padding", "dilation", "groups")
            if k in a
        ]
        lines.append(f'  {_dot_id(u)} -> {_dot_id(v)} [label="{_dot_text(" ".join(parts))}"];')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_graph(g, path: Path, fmt: str) -> None:
    """Write ``g`` to ``path`` as ``fmt``: ``"json"``, ``"graphml"`` or ``"dot"``."""
    from .._io import atomic_write

    if fmt == "json":
        from ..graph import dumps

        text = dumps(g) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))
    elif fmt == "graphml":
        import networkx as nx

        h = _flat_attributes(g)
        h.graph = {k: v for k, v in h.graph.items() if isinstance(v, (bool, int, float, str))}
        atomic_write(path, lambda f: nx.write_graphml(h, f))
    else:
        write_dot(g, path)
