"""The ``deepframe`` command (also ``python -m deepframe``).

Subcommands: ``describe``, ``metrics``, ``train``, ``attack``, ``reproduce``.
An architecture argument is a builder spec (``resnet:blocks_per_stage=1``,
``chain:input_shape=1x8x8,widths=8x16``) or a node-link JSON file. The user's
guide is docs/cli.md.

This module imports only the standard library at import time: PyTorch and
deepframe's torch modules are imported inside the commands, so ``deepframe
--help``, ``--version`` and argument errors answer without importing torch.

Errors. Every failure ends as one line on stderr, ``deepframe COMMAND:
error: WHAT``, and an exit status: 2 for bad input (arguments, files,
settings, a request larger than the memory budget), 1 for a failure while
working (a diverged run, an I/O error, an internal error), 130 when
interrupted. ``--debug`` (or the environment variable ``DEEPFRAME_DEBUG=1``)
lets the exception through with its traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import numbers
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from . import __version__

__all__ = ["main", "build_parser", "CommandError", "DEBUG_ENV", "metrics_report"]

#: Environment variable that turns on ``--debug`` (tracebacks) for every command.
DEBUG_ENV = "DEEPFRAME_DEBUG"
#: Exit statuses.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: The data sets of ``deepframe.data.DATASETS`` (listed here so that ``--help`` does not
#: import torch; a test checks both lists agree) with their default attack radius.
DATASET_EPS = {"digits": "0.1", "synthetic": "0.04", "cifar10": "8/255"}
#: The methods of ``deepframe.compile`` and the default T of each.
METHOD_ITERATIONS = {"feedforward": 0, "layered": 3, "deep": 3}
#: Nodes beyond which ``describe`` leaves out the block map unless asked.
BLOCK_MAP_NODES = 60


class CommandError(Exception):
    """A user-facing error: one line, and the exit status it ends with."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- argument types
# Pure Python: argparse calls them before any heavy import, and a bad value is an
# immediate "argument --x: ..." error.


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(*, minimum: float = 0.0, strict: bool = False, below: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value > minimum if strict else value >= minimum
        high_ok = below is None or value < below
        if not math.isfinite(value) or not low_ok or not high_ok:
            rel = ">" if strict else ">="
            bound = f" and < {below}" if below is not None else ""
            raise argparse.ArgumentTypeError(
                f"must be a finite number {rel} {minimum:g}{bound}, got {text!r}"
            )
        return value

    return parse


def _seed_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _alpha(text: str) -> float | str:
    if text == "fista":
        return text
    try:
        return _real(minimum=0.0, below=1.0)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"'fista' or a number in [0, 1): {exc}") from None


def _beta(text: str) -> float | str:
    if text == "learned":
        return text
    value = _real(minimum=0.0, strict=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"'learned' or a number in (0, 1], got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(
            f"expected C x H x W (e.g. 3x32x32) or a vector size d, got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _size(text: str) -> int:
    from ._io import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _eps_text(text: str) -> str:
    """An eps list (``8/255,0.1``): syntax checked here, values again by the library."""
    from fractions import Fraction

    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated eps values, got {text!r}")
    for item in items:
        try:
            value = float(Fraction(item))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"cannot read eps {item!r}: use a number or a fraction like 8/255"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"eps must be finite and >= 0, got {item!r}")
    return ",".join(items)


def _eps_ladder(text: str) -> str:
    """``"8/255"`` -> ``"1/255,2/255,4/255,8/255"``: eps/8, eps/4, eps/2, eps."""
    from fractions import Fraction

    num, slash, den = text.partition("/")
    out = []
    for k in (8, 4, 2, 1):
        part = Fraction(num) / k
        if slash and part.denominator == 1:
            out.append(f"{part.numerator}/{den}")
        elif slash:  # e.g. 3/255 / 8 = 3/2040: exact, not a rounded decimal
            value = Fraction(num) / (Fraction(den) * k)
            out.append(f"{value.numerator}/{value.denominator}")
        else:
            out.append(repr(float(Fraction(text)) / k))
    return ",".join(out)


# --------------------------------------------------------------------------- small helpers


def _say(args, text: str) -> None:
    """A status line on stderr (stdout stays for results, e.g. --json)."""
    print(f"deepframe {args.command}: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _memory_budget(args) -> Iterator[None]:
    """Apply ``--memory-budget`` to every library call of this command, then restore."""
    from ._io import format_bytes

    budget = getattr(args, "memory_budget", None)
    if budget is None:
        yield
        return
    name = "DEEPFRAME_MEMORY_BUDGET"
    old = os.environ.get(name)
    os.environ[name] = str(budget)
    try:
        _say(args, f"memory budget {format_bytes(budget)}")
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _device(args):
    """The checked torch device of ``--device`` (default: cuda if present, else cpu)."""
    from ._device import check_device

    try:
        return check_device(args.device)
    except ValueError as exc:
        raise CommandError(f"--device: {exc}") from None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(path.anchor)


def _check_writable(path: Path, option: str) -> None:
    """Refuse a destination whose nearest existing folder is not a writable folder."""
    anchor = _existing_ancestor(path.parent)
    if not anchor.is_dir():
        raise CommandError(f"{option} {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: cannot write in {anchor} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.absolute() == b.absolute()


def _check_output_file(path: Path, option: str, *, inputs=(), force: bool = False) -> None:
    """An output file: never an input, never a folder, not replaced without ``--force``."""
    for source in inputs:
        if _same_file(path, Path(source)):
            raise CommandError(
                f"{option} {path} is the input {source}: write the result to another file "
                "(nothing was changed)"
            )
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder: give a file name, e.g. {path / 'x'}")
    if path.exists() and not force:
        raise CommandError(
            f"{option} {path} exists (an earlier result?): pass --force to replace it, or "
            "choose another file"
        )
    _check_writable(path, option)


def _check_output_folder(path: Path, option: str, names: tuple[str, ...]) -> None:
    """An output folder: not a file, its result files not folders, writable."""
    if path.exists() and not path.is_dir():
        inside = f" ({', '.join(names)})" if names else ""
        raise CommandError(
            f"{option} {path} is a file: this command writes a folder{inside}; give a folder name"
        )
    for name in names:
        if (path / name).is_dir():
            raise CommandError(f"{option} {path}: {path / name} is a folder, expected a file")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CommandError(f"{option} {path}: cannot write in it (permission denied)")
    else:
        _check_writable(path / "x", option)


def _graph(spec: str, input_shape: tuple[int, ...] | None = None):
    from .graph import from_spec, input_node, validate

    g = from_spec(spec)
    if input_shape is not None:
        g.nodes[input_node(g)]["shape"] = tuple(input_shape)
        g = validate(g)
    return g


def _torch_model(args):
    """``--from-torch module:factory --weights FILE --input-shape C,H,W``: the user's
    trained PyTorch model as ``(graph, weights)`` (see :mod:`deepframe.interop`)."""
    from .interop import from_torch_args

    return from_torch_args(args.arch, args.from_torch, args.weights, args.input_shape)


# --------------------------------------------------------------------------- describe


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
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _dot_id(value) -> str:
    return f'"{_dot_text(value)}"'


def write_dot(g, path: Path) -> None:
    """The graph as Graphviz DOT text: one labelled node per activation, one edge per op."""
    from ._io import atomic_write

    h = _flat_attributes(g)
    lines = [f"digraph {_dot_id(h.graph.get('name', 'deepframe'))} {{", "  rankdir=LR;"]
    for node, a in h.nodes(data=True):
        lines_ = [str(node), str(a.get("shape", ""))]
        extra = " ".join(f"{k}={a[k]}" for k in ("merge", "op", "bias") if a.get(k))
        label = "\\n".join(_dot_text(t) for t in (*lines_, extra) if t)
        shape = "box" if a.get("kind") == "input" else "ellipse"
        lines.append(f'  {_dot_id(node)} [shape={shape}, label="{label}"];')
    for u, v, a in h.edges(data=True):
        parts = [str(a.get("op", "identity"))]
        parts += [f"{k}={a[k]}" for k in ("kernel_size", "stride", "padding") if k in a]
        lines.append(f'  {_dot_id(u)} -> {_dot_id(v)} [label="{_dot_text(" ".join(parts))}"];')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_graph(g, path: Path, fmt: str) -> None:
    from ._io import atomic_write

    if fmt == "json":
        from .graph import dumps

        text = dumps(g) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))
    elif fmt == "graphml":
        import networkx as nx

        h = _flat_attributes(g)
        h.graph = {k: v for k, v in h.graph.items() if isinstance(v, (bool, int, float, str))}
        atomic_write(path, lambda f: nx.write_graphml(h, f))
    else:
        write_dot(g, path)


_FORMATS = {".json": "json", ".graphml": "graphml", ".xml": "graphml", ".dot": "dot", ".gv": "dot"}


def describe(args) -> int:
    """Print nodes, shapes, edges, D's size and its block map; optionally write the graph."""
    out = Path(args.out) if args.out else None
    fmt = args.format
    if out is not None:
        fmt = fmt or _FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise CommandError(
                f"--out {out}: cannot tell the format from the suffix {out.suffix!r}: use .json, "
                ".graphml or .dot, or pass --format"
            )
        _check_output_file(out, "--out", inputs=[args.arch] if args.arch else [], force=args.force)
    elif fmt:
        raise CommandError("--format needs --out (the file to write)")

    import torch

    from .dictionary import GlobalDictionary, parameter_shapes, random_weights
    from .graph import activation_nodes, input_node, output_node

    if args.from_torch or args.weights or args.arch is None:  # a user's own PyTorch model
        g = _torch_model(args)[0]
    else:
        g = _graph(args.arch, args.input_shape)
    D = GlobalDictionary(g, random_weights(g, dtype=torch.float32))  # memory checked first
    _say(args, "device cpu")
    src = input_node(g)
    print(f"input   {src}: shape {tuple(g.nodes[src]['shape'])}")
    print("nodes (column order):")
    for j in activation_nodes(g):
        a = g.nodes[j]
        extra = []
        if a.get("merge", "edge") == "input":
            extra.append(f"merge=input op={a['op']} z{tuple(a['input_shape'])}")
        if a.get("bias"):
            extra.append(f"bias={a['bias']}")
        if a.get("batchnorm"):
            extra.append("batchnorm")
        print(f"  {str(j):>12}  {str(tuple(a['shape'])):>14}  {' '.join(extra)}")
    print("edges:")
    column = {j: i for i, j in enumerate(activation_nodes(g))}
    for k, j, a in sorted(g.edges(data=True), key=lambda e: (column[e[1]], str(e[0]))):
        detail = {key: a[key] for key in ("kernel_size", "stride", "padding") if key in a}
        op = a.get("op", "identity")
        print(
            f"  {str(k):>12} -> {str(j):<12} {op:<9} {tuple(a['in_shape'])} -> "
            f"{tuple(a['out_shape'])} {detail if detail else ''}"
        )
    print(f"output  {output_node(g)} -> global average pooling -> linear")
    n, big_n = D.shape
    params = sum(math.prod(s) for s, _ in parameter_shapes(g).values())
    print(
        f"global dictionary D: {n} rows x {big_n} atoms, {len(D.terms)} terms, "
        f"{params} learned weights"
    )
    nodes = len(D.nodes)
    if args.block_map or nodes <= BLOCK_MAP_NODES:
        print("block map (rows: terms, columns: nodes):")
        print(D.block_map())
    else:
        print(f"block map left out ({nodes} nodes > {BLOCK_MAP_NODES}): --block-map prints it")
    if out is not None:
        _write_graph(g, out, fmt)
        _say(args, f"wrote {out} ({fmt})")
    return EXIT_OK


# --------------------------------------------------------------------------- metrics


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):  # int and numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # float and numpy floats
        return float(value)
    return str(value)


def metrics_report(
    graph_or_D,
    *,
    method: str = "structured",
    seed: int = 0,
    weights=None,
    orders: tuple = (1, 2),
    details: bool = False,
    memory_budget: int | None = None,
) -> dict:
    """All geometry of one dictionary as a JSON-serialisable dict (``deepframe metrics``).

    The numbers are :func:`deepframe.geometry.measure`'s; this lays them out
    for ``--json`` and :func:`format_metrics`.

    Parameters
    ----------
    graph_or_D : networkx.DiGraph or GlobalDictionary
        A graph is compiled with ``weights`` or seeded random weights.
    method : ``"structured"`` or ``"dense"``
    seed : int
        Seed of the random weights when ``weights`` is not given.
    weights : mapping, optional
        ``{key: tensor}`` (e.g. from a checkpoint).
    orders : tuple of int
        Orders of the Welch bounds to report.
    details : bool
        Include the per-block breakdown.
    memory_budget : int or str, optional
        See :func:`deepframe.geometry.gram_metrics`.

    Returns
    -------
    dict
        ``atoms``, ``rows``, ``nonzero_atoms``, ``welch`` (per order),
        ``bounds`` (Welch and structured coherence / FP bounds, ``N_nz``),
        ``coherence``, ``frame_potential``, ``deep_frame_potential``,
        ``structural_nonzeros``, ``attained_at`` (block pair and atoms),
        ``method``, and ``blocks`` with ``details=True``. Node names are strings.
    """
    import networkx as nx

    from .dictionary import GlobalDictionary, dictionary
    from .geometry import measure

    if isinstance(graph_or_D, GlobalDictionary):
        d = graph_or_D
    elif isinstance(graph_or_D, nx.DiGraph):
        d = dictionary(graph_or_D, seed=seed, weights=weights, memory_budget=memory_budget)
    else:
        raise TypeError(
            f"metrics_report needs a graph or a GlobalDictionary, got {type(graph_or_D).__name__}"
        )
    result = measure(d, method=method, orders=orders, details=details, memory_budget=memory_budget)
    m, bounds = result.metrics, result.bounds
    report = {
        "atoms": m.n_atoms,
        "rows": m.n_rows,
        "nonzero_atoms": m.nonzero_atoms,
        "welch": bounds["welch"],
        "bounds": {
            "welch_coherence": bounds["welch_coherence"],
            "welch_frame_potential": bounds["welch_frame_potential"],
            "structured_coherence": bounds["structured_coherence"],
            "structured_frame_potential": bounds["structured_frame_potential"],
        },
        "coherence": m.coherence,
        "frame_potential": m.frame_potential,
        "deep_frame_potential": m.deep_frame_potential,
        "structural_nonzeros": m.structural_nonzeros,
        "attained_at": m.attained_at,
        "method": m.method,
    }
    if details:
        report["blocks"] = m.blocks
    return _jsonable(report)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def format_metrics(report: dict) -> str:
    """``metrics_report``'s dict as a readable table (the raw dict is ``--json``)."""
    bounds = report.get("bounds", {})
    lines = [
        f"global dictionary D: {report.get('rows')} rows x {report.get('atoms')} atoms "
        f"({report.get('nonzero_atoms')} nonzero), method {report.get('method')}",
        "",
        f"{'':28}{'measured':>14}{'Welch bound':>14}{'structured bound':>18}",
        f"{'mutual coherence':28}{_number(report.get('coherence')):>14}"
        f"{_number(bounds.get('welch_coherence')):>14}"
        f"{_number(bounds.get('structured_coherence')):>18}",
        f"{'frame potential':28}{_number(report.get('frame_potential')):>14}"
        f"{_number(bounds.get('welch_frame_potential')):>14}"
        f"{_number(bounds.get('structured_frame_potential')):>18}",
        f"{'deep frame potential':28}{_number(report.get('deep_frame_potential')):>14}",
        f"{'structural nonzeros N_nz':28}{_number(report.get('structural_nonzeros')):>14}",
    ]
    welch = report.get("welch") or []
    if welch:
        lines += ["", "Welch bounds by order k:"]
        for row in welch:
            lines.append(
                f"  k={row.get('k')}: coherence >= {_number(row.get('coherence'))}, "
                f"frame potential >= {_number(row.get('frame_potential'))}"
            )
    at = report.get("attained_at") or {}
    atoms = at.get("atoms") or []
    if len(atoms) == 2:
        where = [
            f"{a.get('node')} channel {a.get('channel', a.get('feature'))}"
            + (f" at {tuple(a['position'])}" if a.get("position") is not None else "")
            for a in atoms
        ]
        lines += [
            "",
            f"coherence attained between {where[0]} and {where[1]} "
            f"(columns {atoms[0].get('column')}, {atoms[1].get('column')})",
        ]
    shown = {
        "atoms", "rows", "nonzero_atoms", "method", "bounds", "coherence", "frame_potential",
        "deep_frame_potential", "structural_nonzeros", "welch", "attained_at",
    }  # fmt: skip
    for key, value in report.items():
        if key not in shown and isinstance(value, (int, float, str)):
            lines.append(f"{key}: {_number(value)}")
    return "\n".join(lines)


def metrics(args) -> int:
    """Geometry of the global dictionary: Welch bounds, coherence, frame potentials."""
    if args.arch is None and args.checkpoint is None and not (args.from_torch or args.weights):
        raise CommandError(
            "give an architecture, --checkpoint for a trained model's, or --from-torch for "
            "a PyTorch model's"
        )
    import torch

    device = _device(args)
    if args.from_torch or args.weights:  # a user's own trained PyTorch model, float64
        from .dictionary import dictionary

        if args.checkpoint:
            raise CommandError("--from-torch and --checkpoint name two models: give one")
        g, weights = _torch_model(args)
        D = dictionary(g, weights=weights).to(torch.float64, device)
        _say(args, f"device {device}, weights of {args.from_torch}, float64")
    elif args.checkpoint:  # the trained weights (and stored architecture), in float64
        from .checkpoints import architecture_differences, load_model
        from .dictionary import GlobalDictionary
        from .graph import dumps, input_node, validate

        model = load_model(args.checkpoint, map_location=device)
        stored = model.dictionary()
        g = stored.graph
        if args.arch is not None:
            given = _graph(args.arch, tuple(g.nodes[input_node(g)]["shape"]))
            if dumps(given) != dumps(g):
                diff = "; ".join(architecture_differences(dumps(g), dumps(given))[:3])
                raise CommandError(
                    f"{args.checkpoint} stores another architecture than {args.arch!r} ({diff}): "
                    "leave out the architecture to measure the stored one"
                )
        if args.input_shape:
            g = g.copy()
            g.nodes[input_node(g)]["shape"] = tuple(args.input_shape)
            g = validate(g)
        D = GlobalDictionary(g, stored.weights, stored.lambdas).to(torch.float64, device)
        _say(args, f"device {device}, trained weights of {args.checkpoint}, float64")
    else:
        from .dictionary import dictionary

        g = _graph(args.arch, args.input_shape)
        D = dictionary(g, seed=args.seed, dtype=torch.float64, device=device)
        _say(args, f"device {device}, random weights (seed {args.seed}), float64")
    report = metrics_report(D, method=args.method)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_metrics(report))
    return EXIT_OK


# --------------------------------------------------------------------------- train


def _iterations(args) -> tuple[int, str]:
    """T and how it was chosen; ``--iterations`` with ``feedforward`` is a contradiction."""
    if args.iterations is None:
        t = METHOD_ITERATIONS[args.method]
        return t, f"T={t} (the default for {args.method})"
    if args.method == "feedforward" and args.iterations > 0:
        raise CommandError(
            f"--iterations {args.iterations} has no effect with --method feedforward (T = 0 "
            "by definition): drop it, or choose --method layered or deep"
        )
    note = ""
    if args.iterations == 0 and args.method != "feedforward":
        note = f" (with T=0, {args.method} pursuit is the feed-forward network)"
    return args.iterations, f"T={args.iterations}{note}"


def train_command(args) -> int:
    """Train a compiled solver on a dataset; log per epoch, checkpoint, resume."""
    from .checkpoints import CHECKPOINT_NAME

    iterations, t_text = _iterations(args)
    if args.dataset != "cifar10" and (args.data_dir or args.augment):
        flag = "--data-dir" if args.data_dir else "--augment"
        raise CommandError(f"{flag} applies to --dataset cifar10 only, not {args.dataset}")
    out = Path(args.out)
    _check_output_folder(out, "--out", (CHECKPOINT_NAME, "log.jsonl"))
    fgsm_eps = args.fgsm_eps or DATASET_EPS[args.dataset]

    import torch

    from .checkpoints import model_metadata
    from .data import DATASETS, load_dataset
    from .dictionary import check_memory
    from .graph import input_node, validate
    from .pursuit import compile
    from .train import ResumeMismatchError, resume_state, train

    device = _device(args)
    info = DATASETS[args.dataset]
    g = _graph(args.arch)
    g.nodes[input_node(g)]["shape"] = tuple(info.input_shape)
    g = validate(g)
    solver = "pursuit" if args.method != "feedforward" and iterations else "weights"
    check_memory(g, solver, dtype=torch.float32)  # before any work (compile checks again)
    options = {
        "method": args.method,
        "iterations": iterations,
        "alpha": args.alpha,
        "beta": args.beta,
        **info.compile_options(),
        "seed": args.seed,
    }
    metadata = model_metadata(g, dataset=args.dataset, **options)
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": None if args.schedule == "none" else args.schedule,
        "seed": args.seed,
        "fgsm_eps": fgsm_eps,
        "adversarial": {"eps": args.adversarial_eps} if args.adversarial_eps else None,
    }
    checkpoint = out / CHECKPOINT_NAME
    state = None
    if not args.restart:
        try:
            state = resume_state(out, metadata=metadata, **settings)
        except ResumeMismatchError as exc:
            shown = "; ".join(exc.differences[:6])
            more = f"; and {len(exc.differences) - 6} more" if len(exc.differences) > 6 else ""
            raise CommandError(
                f"{checkpoint} was trained with other settings ({shown}{more}): pass "
                "--restart to start over (replaces its checkpoint and log), or use another --out"
            ) from None
        except ValueError as exc:
            if not checkpoint.exists():
                raise
            raise CommandError(
                f"{exc}: pass --restart to replace it with a new run, or use another --out"
            ) from None
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if state is not None and state["epoch"] >= args.epochs:
        last = state["history"][-1] if state["history"] else {}
        if rank0:
            _report_train(args, last, out, complete=True)
        return EXIT_OK

    resuming = f"; resuming after epoch {state['epoch']}" if state is not None else ""
    if rank0:
        _say(
            args,
            f"{args.arch} as {args.method} pursuit, {t_text}, on {args.dataset}, "
            f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}, {args.optimizer} lr "
            f"{args.lr:g}, FGSM eps {fgsm_eps}, "
            f"device {device}{resuming}",
        )
    model = compile(g, **options)
    train_set, val_set = load_dataset(
        args.dataset, data_dir=args.data_dir, seed=args.seed, augment=args.augment
    )
    history = train(
        model,
        train_set,
        val_set,
        **settings,
        log_path=out / "log.jsonl",
        checkpoint_dir=out,
        resume=not args.restart,
        progress=not args.quiet,
        device=device,
        metadata=metadata,
    )
    if rank0:  # under torchrun, rank 0 reports
        _report_train(args, history[-1] if history else {}, out, complete=False)
    return EXIT_OK


def _report_train(args, last: dict, out: Path, *, complete: bool) -> None:
    keys = ("epoch", "train_acc", "val_acc", "fgsm_eps", "val_fgsm_acc")
    result = {k: last.get(k) for k in keys}
    result.update(
        {
            "already_complete": complete,
            "checkpoint": str(out / "checkpoint.pt"),
            "log": str(out / "log.jsonl"),
        }
    )
    if complete:
        _say(
            args,
            f"{out} already holds a complete run ({last.get('epoch')}/{args.epochs} epochs): "
            "nothing to train; its last epoch is below (--restart trains it again)",
        )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"epoch {result['epoch']}: train acc {_number(result['train_acc'])}, val acc "
        f"{_number(result['val_acc'])}, FGSM acc {_number(result['val_fgsm_acc'])} "
        f"at eps {_number(result['fgsm_eps'])}"
    )
    print(f"checkpoint: {result['checkpoint']}  log: {result['log']}")


# --------------------------------------------------------------------------- attack


def attack_command(args) -> int:
    """Accuracy of a trained checkpoint under FGSM or PGD for each eps."""
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        raise CommandError(
            f"{checkpoint} is a folder: give the checkpoint file"
            + (" (its checkpoint.pt?)" if (checkpoint / "checkpoint.pt").is_file() else "")
        )
    if not checkpoint.is_file():
        raise CommandError(f"checkpoint not found: {checkpoint}")
    out = Path(args.out) if args.out else checkpoint.with_name(f"attack_{args.attack}.json")
    _check_output_file(out, "--out", inputs=[checkpoint], force=args.force)

    import torch
    from tqdm.auto import tqdm

    from ._io import write_json
    from .attacks import evaluate, parse_eps_list
    from .checkpoints import load_checkpoint, load_model
    from .data import load_dataset

    device = _device(args)
    model = load_model(checkpoint, map_location=device)
    stored = (load_checkpoint(checkpoint, training=False).get("metadata") or {}).get("dataset")
    dataset = args.dataset or stored
    if dataset is None:
        raise CommandError(f"{checkpoint} does not record its dataset: pass --dataset")
    if dataset not in DATASET_EPS:
        raise CommandError(
            f"{checkpoint} records the dataset {dataset!r}, which is not one of "
            f"{', '.join(DATASET_EPS)}: pass --dataset"
        )
    eps_text = args.eps or _eps_ladder(DATASET_EPS[dataset])
    eps = parse_eps_list(eps_text)
    if args.data_dir and dataset != "cifar10":
        raise CommandError(f"--data-dir applies to cifar10 only, not {dataset}")
    _, val_set = load_dataset(dataset, data_dir=args.data_dir, seed=args.seed)
    if args.limit is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(args.limit, len(val_set))))
    steps = f", {args.steps} steps" if args.attack == "pgd" else ""
    _say(
        args,
        f"{args.attack}{steps} at eps {eps_text} on {len(val_set)} {dataset} samples, "
        f"device {device}",
    )
    batches = torch.utils.data.DataLoader(val_set, batch_size=256, shuffle=False)
    bar = tqdm(batches, desc=f"{args.attack} x {len(eps)} eps", disable=args.quiet, leave=False)
    measured = evaluate(model, bar, eps, args.attack, steps=args.steps, seed=args.seed)
    clean, accs = measured.accuracy, measured.robust_accuracy
    result = {
        "checkpoint": str(checkpoint),
        "attack": args.attack,
        "steps": args.steps if args.attack == "pgd" else None,
        "dataset": dataset,
        "samples": len(val_set),
        "device": str(device),
        "clean": clean,
        "accuracy": {f"{e:.6g}": a for e, a in accs.items()},
    }
    write_json(out, result, indent=2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"clean accuracy: {clean:.4f}")
        for text, (e, a) in zip(eps_text.split(","), accs.items()):
            print(f"{args.attack} eps={text.strip()} ({e:.5f}): {a:.4f}")
    _say(args, f"wrote {out}")
    return EXIT_OK


# --------------------------------------------------------------------------- reproduce


def reproduce_command(args) -> int:
    """The seed paper's Figs. 5-10 and claims end to end: train, attack, measure, report."""
    from .experiments import merge, reproduce

    seeds = args.seeds
    _check_output_folder(Path(args.out), "--out", ())
    _say(args, f"device cpu ({args.jobs} model(s) at a time, one process each)")
    if args.merge:
        summary = merge(
            args.merge,
            args.out,
            profile=args.profile,
            data_dir=args.data_dir,
            seeds=seeds,
            jobs=args.jobs,
            progress=not args.quiet,
        )
        print(f"merged {len(summary['models'])} models; report: {args.out}/report.md")
        return EXIT_OK
    result = reproduce(
        args.out,
        profile=args.profile,
        data_dir=args.data_dir,
        seeds=seeds,
        shard=args.shard,
        only=args.only,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    done = len(result["models"])
    if result["results"] is None:
        print(
            f"{done} models ({result['trained_now']} trained now) in {args.out}; "
            "no report for a part of the profile: merge the parts with "
            f"deepframe reproduce --profile {args.profile} --merge DIR... --out DEST"
        )
    else:
        print(
            f"{done} models ({result['trained_now']} trained now); "
            f"report: {args.out}/report.md, numbers: {args.out}/results.json"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``deepframe train: error: argument --lr: ...``."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends "(default: ...)" to options with a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text


ARCH_HELP = """\
architecture (ARCH):
  a builder spec  NAME[:KEY=VALUE,KEY=VALUE,...]  or a node-link .json file.
  Values: integers, numbers, true/false, tuples written with x (8x16; one
  entry for a one-entry tuple), words (B). Builders and their options:

    chain     input_shape=1x8x8 (C x H x W, or d for vectors), widths=8x16,
              kernel_size=3, strides=1x1 (one per width), dense=true|false
              (default: dense exactly for vector inputs), bias=0.0 (lambda),
              batchnorm=false, merge=edge|input (node-centric form)
    resnet    input_shape=3x32x32, blocks_per_stage=1, widths=16x32x64,
              shortcut=A|B, kernel_size=3, bias=0.0, batchnorm=false,
              skips=true (false: the chain twin without skip edges)
    densenet  input_shape=3x32x32, layers_per_stage=3, widths=16x32x64,
              kernel_size=3, bias=0.0, batchnorm=false

  examples:
    resnet                                   the CIFAR ResNet-8 at 3x32x32
    resnet:blocks_per_stage=2,shortcut=B     ResNet-14 with 1x1 projections
    chain:input_shape=1x8x8,widths=8x16,strides=1x2
    chain:input_shape=64,widths=32x10        a dense network (MLP)
    densenet:input_shape=3x16x16,layers_per_stage=2,widths=8x16
    runs/net.json                            a node-link graph (see --out)

  A file named like a builder is ambiguous: write ./resnet for the file or
  resnet: for the builder. The graph format is in docs/concepts.md; the
  command line in docs/cli.md.
"""

_BUDGET_HELP = (
    "memory a single step may allocate, e.g. 16G or 512M; requests estimated above it are "
    "refused before allocating (default: $DEEPFRAME_MEMORY_BUDGET, else 2G)"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``deepframe`` argument parser (no heavy imports)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)",
    )
    parser = _Parser(
        prog="deepframe",
        description="Global dictionaries, deep pursuit and their geometry. "
        "Guide: docs/cli.md; architectures: deepframe describe --help.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"deepframe {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False,
        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    parser.set_defaults(subcommands=commands)

    def add(name, help_text, func, epilog=None):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog,
            parents=[common],
            formatter_class=_Formatter,
        )
        p.set_defaults(func=func)
        commands[name] = p
        return p

    def arch(p, optional=False):
        p.add_argument(
            "arch",
            metavar="ARCH",
            nargs="?" if optional else None,
            default=None,
            help="builder spec (e.g. resnet:blocks_per_stage=1) or node-link .json file; "
            "syntax: deepframe describe --help",
        )

    def from_torch(p):
        p.add_argument(
            "--from-torch",
            metavar="MODULE:FACTORY",
            help="a PyTorch model instead of ARCH: a module (or file.py) and the function "
            "that builds it, e.g. mymodels:resnet20; needs --input-shape "
            "(docs/bring-your-own-model.md) (default: none, read ARCH)",
        )
        p.add_argument(
            "--weights",
            metavar="FILE",
            help="with --from-torch: its trained weights, a state_dict file (also inside "
            "'state_dict' or 'model', DataParallel's module. prefix removed) (default: the "
            "weights the factory builds)",
        )

    def device(p, what):
        p.add_argument(
            "--device",
            default=None,
            help=f"where {what} runs: cpu, cuda, cuda:N or mps (default: cuda if present, "
            "else cpu)",
        )

    p = add("describe", "nodes, shapes, edges and the block map of D", describe, ARCH_HELP)
    arch(p, optional=True)
    from_torch(p)
    p.add_argument(
        "--input-shape",
        type=_shape,
        metavar="CxHxW",
        help="override the input shape, e.g. 3x32x32 (default: the architecture's own); "
        "with --from-torch the model's input shape (3,32,32 also accepted)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="also write the graph: .json (node-link, editable and readable as ARCH), "
        ".graphml or .dot, for graph tools (default: write nothing)",
    )
    p.add_argument(
        "--format",
        choices=["json", "graphml", "dot"],
        help="format of --out (default: from its suffix)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--block-map",
        action="store_true",
        help=f"print the block map also for graphs of more than {BLOCK_MAP_NODES} nodes",
    )
    p.add_argument("--memory-budget", type=_size, metavar="SIZE", help=_BUDGET_HELP)

    p = add("metrics", "Welch bounds, coherence, frame potentials of D", metrics, ARCH_HELP)
    arch(p, optional=True)
    from_torch(p)
    p.add_argument(
        "--input-shape",
        type=_shape,
        metavar="CxHxW",
        help="override the input shape, e.g. 3x32x32 (default: the architecture's own); "
        "with --from-torch the model's input shape (3,32,32 also accepted)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="measure a trained model's dictionary, its stored architecture (ARCH may be left "
        "out) and weights (default: random weights)",
    )
    p.add_argument(
        "--method",
        default="structured",
        choices=["structured", "dense"],
        help="structured: exact, never forms the Gram; dense: the slow reference",
    )
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of the random weights")
    p.add_argument("--json", action="store_true", help="print the raw report as JSON")
    device(p, "the geometry")
    p.add_argument("--memory-budget", type=_size, metavar="SIZE", help=_BUDGET_HELP)

    p = add(
        "train",
        "train a compiled solver (log, checkpoints, resume)",
        train_command,
        "Rerunning the same command resumes after the last finished epoch; a finished run\n"
        "says so and trains nothing; other settings are refused (--restart starts over).\n"
        "Guide: docs/cli.md and docs/training.md.",
    )
    arch(p)
    p.add_argument(
        "--method",
        default="deep",
        choices=list(METHOD_ITERATIONS),
        help="feedforward: the plain network (L-TP); layered: local iterations (L-BP); deep: "
        "global iterations (DP, DP-res with skips)",
    )
    p.add_argument(
        "--iterations",
        type=_integer(0),
        default=None,
        metavar="T",
        help="unrolled pursuit iterations (default: "
        + ", ".join(f"{t} for {m}" for m, t in METHOD_ITERATIONS.items())
        + ")",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.0,
        help="extrapolation: a number in [0, 1) or 'fista' (the FISTA schedule)",
    )
    p.add_argument(
        "--beta",
        type=_beta,
        default="learned",
        help="step size factor: 'learned' (per node) or a number in (0, 1]",
    )
    p.add_argument("--dataset", default="digits", choices=list(DATASET_EPS), help="data set")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder of cifar-10-batches-py (default: none; required for cifar10, only there)",
    )
    p.add_argument("--augment", action="store_true", help="random crop + flip (cifar10)")
    p.add_argument("--epochs", type=_integer(1), default=10, help="epochs in total")
    p.add_argument("--batch-size", type=_integer(1), default=128, help="global batch size")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam"], help="optimizer")
    p.add_argument("--lr", type=_real(strict=True), default=1e-2, help="learning rate (> 0)")
    p.add_argument("--momentum", type=_real(), default=0.9, help="SGD momentum (>= 0)")
    p.add_argument(
        "--weight-decay", type=_real(), default=5e-4, help="L2 on weights and kernels (>= 0)"
    )
    p.add_argument(
        "--schedule",
        default="cosine",
        choices=["cosine", "step", "none"],
        help="learning-rate schedule per epoch",
    )
    p.add_argument(
        "--fgsm-eps",
        type=_eps_text,
        default=None,
        metavar="EPS",
        help="eps of the per-epoch FGSM accuracy, a number or a fraction such as 8/255 "
        "(default: the data set's: " + ", ".join(f"{d} {e}" for d, e in DATASET_EPS.items()) + ")",
    )
    p.add_argument(
        "--adversarial-eps",
        type=_eps_text,
        default=None,
        metavar="EPS",
        help="FGSM adversarial training (random start) at this eps (default: none)",
    )
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of weights, data and order")
    device(p, "training")
    p.add_argument(
        "--out", default="runs/train", metavar="DIR", help="folder of log.jsonl and checkpoint.pt"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: replace the checkpoint and log in --out",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final record as JSON")
    p.add_argument("--memory-budget", type=_size, metavar="SIZE", help=_BUDGET_HELP)

    p = add(
        "attack",
        "accuracy of a checkpoint under FGSM or PGD",
        attack_command,
        "The result is also written as JSON (--out); an existing file is never replaced\n"
        "without --force, and never the checkpoint. Units of eps: docs/robustness.md.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.pt of deepframe train")
    p.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"], help="the attack")
    p.add_argument(
        "--eps",
        type=_eps_text,
        default=None,
        help="comma-separated radii in pixel units, e.g. 1/255,2/255 or 0.05,0.1 (default: "
        "eps/8, eps/4, eps/2, eps with the data set's eps: "
        + ", ".join(f"{d} {e}" for d, e in DATASET_EPS.items())
        + ")",
    )
    p.add_argument("--steps", type=_integer(1), default=10, help="PGD steps")
    p.add_argument(
        "--dataset",
        default=None,
        choices=list(DATASET_EPS),
        help="data set (default: the one the model was trained on)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of cifar-10-batches-py (default: none; required for cifar10, only there)",
    )
    p.add_argument(
        "--limit",
        type=_integer(1),
        default=None,
        metavar="N",
        help="attack the first N validation samples only (default: all)",
    )
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of PGD's random starts")
    device(p, "the attack")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="JSON result (default: attack_fgsm.json or attack_pgd.json beside the checkpoint)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--memory-budget", type=_size, metavar="SIZE", help=_BUDGET_HELP)

    p = add(
        "reproduce",
        "the seed paper's Figs. 5-10 and a verdict per claim (docs/results.md)",
        reproduce_command,
    )
    p.add_argument(
        "--profile",
        default="quick",
        choices=["quick", "cifar-small", "full", "test"],
        help="quick: digits, 3 seeds, minutes on a CPU (default); cifar-small: CIFAR-10 "
        "subset, hours on 2 CPU cores (docs/results.md); full: the paper's scale, for a GPU; "
        "test: a seconds-long smoke test",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="CIFAR-10 folder (cifar-10-batches-py layout), required by cifar-small and full "
        "(default: none)",
    )
    p.add_argument("--out", default="runs/reproduce", help="run folder (resumable)")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="comma-separated seeds, e.g. 0,1,2 (default: the profile's)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="train only shard i of n, e.g. 1/3 (default: all)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="PATTERNS",
        help="train only models whose names match these comma-separated shell patterns, e.g. "
        "'ff-*,adv-*' (default: all)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="join the models of these run folders into --out and write the report "
        "(default: train instead)",
    )
    p.add_argument(
        "--jobs", type=_integer(1), default=2, help="models trained at once, one process each"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# --------------------------------------------------------------------------- main


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message of an exception that reached the command line."""
    if isinstance(exc, CommandError):
        return exc.code, _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        code = EXIT_USAGE if isinstance(exc, (FileNotFoundError, PermissionError)) else 1
        return code, _one_line(f"{exc.strerror}{where}")
    if isinstance(exc, (FileNotFoundError, ValueError)):  # incl. ArchitectureError, budgets
        return EXIT_USAGE, _one_line(str(exc))
    if isinstance(exc, FloatingPointError):
        return EXIT_FAILURE, _one_line(f"{exc}: lower --lr, or check the data")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return EXIT_FAILURE, _one_line(
            f"ran out of memory ({first[:160]}): lower --batch-size, use a smaller architecture, "
            "or a machine with more memory"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return EXIT_FAILURE, _one_line(
        f"internal error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the "
        "traceback, and please report it)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 success, 1 failure, 2 bad input)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand, whose options they are not
            args.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:  # --help, --version and argument errors
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_USAGE
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    try:
        with _memory_budget(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        resumable = args.command in ("train", "reproduce")
        hint = " (rerun the same command to resume)" if resumable else ""
        print(f"\ndeepframe {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `deepframe describe resnet | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        code, message = _message(exc)
        print(f"deepframe {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
