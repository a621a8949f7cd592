"""Measure a trained model (trace, geometry) and select architectures without data.

Both stages are cached beside the models (layout in :mod:`.runner`):
``measure.json`` is keyed by the hash of ``model.pt`` and
:data:`MEASURE_VERSION`, so a change in the measuring code re-measures the
trained models without training them again; ``selection/<arch>.json`` by the
architecture and the optimiser settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .._io import file_hash, json_hash, read_json, write_json
from .datasets import load_data
from .profiles import ModelSpec, Profile, build_graph

__all__ = ["MEASURE_VERSION", "measure_model", "select_architecture"]

#: Bump when the trace or geometry code changes what :func:`measure_model` returns
#: (2: the geometry of the batch-norm-folded dictionary the solver solves; 3: clean
#: accuracy on the whole held-out set).
MEASURE_VERSION = 3


@torch.no_grad()
def _trace(model, x: torch.Tensor) -> dict:
    """Per-node reconstruction error per iteration (mean over images), and per image
    the mean over nodes of the last iteration's error (for the claims' intervals)."""
    _, trace = model.encode(x, trace=True)
    errors = {str(j): e for j, e in trace.node_errors.items()}
    final = torch.stack([e[-1] for e in errors.values()]).mean(0)
    return {
        "node_errors": {j: [float(v) for v in e.mean(1)] for j, e in errors.items()},
        "objective": [float(v) for v in trace.objective.mean(1)],
        "final_error_per_image": [float(v) for v in final],
    }


def _geometry(model) -> dict:
    """Coherence and (deep) frame potential of the model's dictionary, in float64."""
    from ..geometry import gram_metrics

    D = model.dictionary().to(torch.float64)
    metrics = gram_metrics(D)
    return {
        "shape": list(D.shape),
        "mutual_coherence": float(metrics.coherence),
        "frame_potential": float(metrics.frame_potential),
        "deep_frame_potential": float(metrics.deep_frame_potential),
    }


def _held_out_accuracy(model, held) -> dict:
    """Clean accuracy on every held-out image (the attacks use a subset of them)."""
    from ..attacks import evaluate

    result = evaluate(model, held)
    return {"clean_acc": result.accuracy, "images": result.count}


def measure_model(name: str, profile: Profile, out_dir: str | Path, data_dir=None) -> dict:
    """Trace (Fig. 8), geometry (Figs. 9, 10) and clean accuracy on the whole held-out
    set (CIFAR-10: the 10,000 test images) of a trained model, cached in measure.json."""
    from ..checkpoints import load_model

    folder = Path(out_dir) / "models" / name
    model_path = folder / "model.pt"
    key = {
        "model": file_hash(model_path),
        "version": MEASURE_VERSION,
        "trace_images": profile.trace_images,
    }
    old = read_json(folder / "measure.json")
    if isinstance(old, dict) and old.get("key") == key:
        return old
    model = load_model(model_path)
    seed = int(read_json(folder / "result.json")["config"]["seed"])
    _, eval_set, _ = load_data(profile, data_dir, seed)
    count = min(profile.trace_images, len(eval_set))
    x = torch.stack([eval_set[i][0] for i in range(count)])
    result = {
        "key": key,
        "trace": _trace(model, x),
        "geometry": _geometry(model),
        "held_out": _held_out_accuracy(model, eval_set.dataset),
    }
    write_json(folder / "measure.json", result)
    return result


def select_architecture(spec: ModelSpec, profile: Profile, out_dir: str | Path) -> dict:
    """Minimum deep frame potential of a model's architecture (no data), cached.

    :func:`deepframe.minimize_frame_potential` from the seeded He-style
    weights, ``profile.selection_steps`` Adam steps; the minimum over the
    history is the model-selection score of Murdock & Lucey (2020).
    """
    import networkx as nx

    from ..data import DATASETS
    from ..geometry import minimize_frame_potential

    info = DATASETS[profile.dataset]
    graph = build_graph(spec, profile, info.input_shape)
    path = Path(out_dir) / "selection" / f"{spec.base}.json"
    structure = nx.node_link_data(graph, edges="edges")
    key = json_hash(
        {"graph": structure, "steps": profile.selection_steps, "lr": profile.selection_lr}
    )
    old = read_json(path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    started = time.perf_counter()
    fit = minimize_frame_potential(
        graph, steps=profile.selection_steps, lr=profile.selection_lr, seed=0
    )
    history = [float(v) for v in fit.history]
    result = {
        "key": key,
        "arch": spec.base,
        "atoms": int(fit.dictionary.shape[1]),
        "initial_dfp": history[0],
        "min_dfp": min(history),
        "history": history,
        "steps": profile.selection_steps,
        "lr": profile.selection_lr,
        "seconds": time.perf_counter() - started,
    }
    write_json(path, result)
    return result
