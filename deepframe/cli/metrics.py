"""``deepframe metrics``: Welch bounds, coherence and frame potentials of D, as a table.

The numbers are :func:`deepframe.geometry.metrics_report`'s (printed raw with
``--json``); :func:`format_metrics` lays them out for reading.
"""

from __future__ import annotations

import argparse
import json

from .arguments import _integer
from .errors import EXIT_OK, CommandError
from .options import (
    ARCH_HELP,
    add_arch,
    add_command,
    add_device,
    add_from_torch,
    add_input_shape,
    add_memory_budget,
)
from .runtime import _device, _graph, _number, _say, _torch_model

__all__ = ["add_parser", "format_metrics", "metrics"]

#: Keys of the report that :func:`format_metrics` lays out itself; any other top-level
#: number or string is printed as ``key: value`` after them.
_SHOWN = {
    "atoms", "rows", "nonzero_atoms", "method", "bounds", "coherence", "frame_potential",
    "deep_frame_potential", "structural_nonzeros", "welch", "attained_at",
}  # fmt: skip


def _vacuous(report: dict) -> list[str]:
    """Which of the report's bounds say nothing here, and why."""
    bounds = report.get("bounds", {})
    n_atoms, rows = report.get("nonzero_atoms"), report.get("rows")
    if not isinstance(n_atoms, (int, float)) or not isinstance(rows, (int, float)):
        return []
    notes = []
    if n_atoms <= rows:
        notes.append(
            f"the Welch bounds: N = {n_atoms} <= n = {rows} (undercomplete: orthonormal atoms "
            "reach mu = 0 and FP = N)"
        )
    fp_bound = bounds.get("structured_frame_potential")
    if isinstance(fp_bound, (int, float)) and fp_bound <= n_atoms * (1 + 1e-12):
        notes.append(
            "the structured bounds: FP_lb = N (each node's atoms fit in the rows they reach)"
        )
    return notes


def format_metrics(report: dict) -> str:
    """``metrics_report``'s dict as a readable table, with what each number bounds and when a
    bound is vacuous (the raw dict is ``--json``)."""
    bounds = report.get("bounds", {})
    n_atoms, rows, n_nz = (
        report.get("nonzero_atoms"),
        report.get("rows"),
        report.get("structural_nonzeros"),
    )

    def dfp_bound(fp_bound):  # DFP = (FP - N) / N_nz >= (FP_bound - N) / N_nz
        if not all(isinstance(v, (int, float)) for v in (fp_bound, n_atoms, n_nz)) or not n_nz:
            return None
        return max(0.0, (fp_bound - n_atoms) / n_nz)

    mu = report.get("coherence")
    lines = [
        f"global dictionary D: {rows} rows x {report.get('atoms')} atoms "
        f"({n_atoms} nonzero), method {report.get('method')}",
        "",
        f"{'':28}{'measured':>14}{'Welch bound':>14}{'structured bound':>18}",
        f"{'mutual coherence':28}{_number(mu):>14}"
        f"{_number(bounds.get('welch_coherence')):>14}"
        f"{_number(bounds.get('structured_coherence')):>18}",
        f"{'frame potential':28}{_number(report.get('frame_potential')):>14}"
        f"{_number(bounds.get('welch_frame_potential')):>14}"
        f"{_number(bounds.get('structured_frame_potential')):>18}",
        f"{'deep frame potential':28}{_number(report.get('deep_frame_potential')):>14}"
        f"{_number(dfp_bound(bounds.get('welch_frame_potential'))):>14}"
        f"{_number(dfp_bound(bounds.get('structured_frame_potential'))):>18}",
        f"{'structural nonzeros N_nz':28}{_number(n_nz):>14}",
        "",
        f"What each number bounds (G: the Gram of the unit-norm atoms; N = {n_atoms} atoms, "
        f"n = {rows} rows):",
        "  mutual coherence      mu = max |G_ij| over i != j",
        "                        Welch: mu >= sqrt((N - n) / (n (N - 1)))",
        "                        structured: mu^2 >= (FP_lb - N) / N_nz",
        "  frame potential       FP = sum_ij G_ij^2 >= N (the diagonal alone)",
        "                        Welch: FP >= N^2 / n",
        "                        structured: FP >= FP_lb = max(N^2 / n, sum_j N_j^2 / r_j)",
        "  deep frame potential  DFP = (FP - N) / N_nz: the mean G_ij^2 over the pairs that can "
        "interact",
        "                        bounds: (the FP bound - N) / N_nz; above: DFP <= mu^2 = "
        f"{_number(mu * mu if isinstance(mu, (int, float)) else None)}",
    ]
    for i, note in enumerate(_vacuous(report)):
        lines.append(f"  {'vacuous here:' if i == 0 else '':22}{note}")
    welch = report.get("welch") or []
    if welch:
        lines += [
            "",
            "Welch bounds by order k (sum_ij |G_ij|^(2k) >= N^2 c_k; only k = 1 is the frame "
            "potential):",
        ]
        for row in welch:
            k, bound = row.get("k"), row.get("frame_potential")
            power = 2 * k if isinstance(k, int) else "2k"
            vacuous = isinstance(bound, (int, float)) and isinstance(n_atoms, int)
            vacuous = vacuous and bound <= n_atoms
            note = f" (vacuous: the diagonal alone gives N = {n_atoms})" if vacuous else ""
            lines.append(
                f"  k={k}: coherence >= {_number(row.get('coherence'))}, "
                f"sum_ij |G_ij|^{power} >= {_number(bound)}{note}"
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
    for key, value in report.items():
        if key not in _SHOWN and isinstance(value, (int, float, str)):
            lines.append(f"{key}: {_number(value)}")
    return "\n".join(lines)


def _checkpoint_dictionary(args, device):
    """The float64 dictionary of ``--checkpoint`` (its stored architecture, or ARCH if equal)."""
    import torch

    from ..checkpoints import architecture_differences, load_model
    from ..dictionary import GlobalDictionary
    from ..graph import dumps, input_node, validate

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
    return GlobalDictionary(g, stored.weights, stored.lambdas).to(torch.float64, device)


def metrics(args) -> int:
    """Geometry of the global dictionary: Welch bounds, coherence, frame potentials."""
    if args.arch is None and args.checkpoint is None and not (args.from_torch or args.weights):
        raise CommandError(
            "give an architecture, --checkpoint for a trained model's, or --from-torch for "
            "a PyTorch model's"
        )
    import torch

    from ..dictionary import dictionary
    from ..geometry import metrics_report

    device = _device(args)
    if args.from_torch or args.weights:  # a user's own trained PyTorch model, float64
        if args.checkpoint:
            raise CommandError("--from-torch and --checkpoint name two models: give one")
        g, weights = _torch_model(args)
        D = dictionary(g, weights=weights).to(torch.float64, device)
        _say(args, f"device {device}, weights of {args.from_torch}, float64")
    elif args.checkpoint:  # the trained weights (and stored architecture), in float64
        D = _checkpoint_dictionary(args, device)
        _say(args, f"device {device}, trained weights of {args.checkpoint}, float64")
    else:
        g = _graph(args.arch, args.input_shape)
        D = dictionary(g, seed=args.seed, dtype=torch.float64, device=device)
        _say(args, f"device {device}, random weights (seed {args.seed}), float64")
    report = metrics_report(D, method=args.method)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_metrics(report))
    return EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe metrics`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers, "metrics", "Welch bounds, coherence, frame potentials of D", metrics, ARCH_HELP
    )
    add_arch(p, optional=True)
    add_from_torch(p)
    add_input_shape(p)
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
    add_device(p, "the geometry")
    add_memory_budget(p)
    return p
