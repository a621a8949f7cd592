"""Training loop: SGD/Adam, schedules, FGSM monitoring, checkpoints, distributed.

One function, :func:`train`, runs on one process or under ``torchrun`` with
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on
CUDA). It writes a JSON-lines log (one record per epoch, the data of the seed
paper's Fig. 7) and an atomically replaced checkpoint from which a run resumes
to exactly the weights an uninterrupted run reaches (on CPU).

Reproducibility without stored RNG state: every random stream of epoch ``e``
(the shuffling, the CIFAR-10 augmentation, the random starts of adversarial
training, the global torch RNG a model may use for dropout) is seeded from
``(seed, e)`` (and the rank) at the start of the epoch. Resuming after epoch
``e`` therefore needs only the weights, the optimizer and the scheduler. The
caller's global RNG state is saved and restored around the whole run.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ._device import check_device
from ._io import atomic_write
from .attacks import _eval_mode, _model_device, fgsm, parse_eps, pgd
from .data import derive_seed, make_loader

__all__ = [
    "ResumeMismatchError",
    "resume_differences",
    "resume_state",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "load_model",
    "model_metadata",
    "pursuit_objective",
    "save_checkpoint",
    "train",
]

#: Marker stored under the key ``"format"`` of every deepframe checkpoint.
CHECKPOINT_FORMAT = "deepframe-checkpoint"
#: Version of the checkpoint layout.
CHECKPOINT_VERSION = 1
#: File name of the checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"

_RECORD_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "fgsm_eps",
    "val_fgsm_acc",
    "lr",
    "time",
)
# settings that change the trajectory: a resumed run must use the same ones
_RESUME_KEYS = (
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "adversarial",
)


# --------------------------------------------------------------------------- checkpoints


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` could not read back."""
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise ValueError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} holds a {type(value).__name__}; checkpoints store only tensors, numbers, "
        "strings, None and lists/dicts of them"
    )


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` as a deepframe checkpoint, atomically.

    The file is written to a temporary file in the same folder, flushed to
    disk (``fsync``) and renamed over ``path`` (``os.replace``), so readers
    see the old or the new checkpoint, never a partial one. The format marker
    and version are added.

    Parameters
    ----------
    path : str or Path
        Destination file.
    state : mapping
        Tensors, numbers, strings, None, and lists/dicts of them (what
        ``torch.load(weights_only=True)`` reads back).
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    _check_plain(payload, "checkpoint")
    atomic_write(Path(path), lambda f: torch.save(payload, f))


class ResumeMismatchError(ValueError):
    """An existing checkpoint was trained with other settings than a resumed run asks for.

    Attributes
    ----------
    path : Path
        The checkpoint.
    differences : list of str
        One ``"name: stored -> requested"`` entry per setting that differs.
    """

    def __init__(self, path: Path, differences: list[str]):
        self.path = Path(path)
        self.differences = list(differences)
        shown = "; ".join(self.differences[:6])
        if len(self.differences) > 6:
            shown += f"; and {len(self.differences) - 6} more"
        super().__init__(
            f"cannot resume from {path}: it was trained with other settings ({shown}); use "
            "the same settings, another checkpoint_dir, or resume=False to start over"
        )


_ZIP_MAGIC = b"PK\x03\x04"


def _sniff(path: Path, head: bytes) -> str | None:
    """Why a file cannot be a torch checkpoint, judged from its first bytes (None: it may be)."""
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":  # torch zip or legacy pickle
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not a PyTorch file (it starts with the bytes {head[:4].hex(' ')})"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file, not a PyTorch file (it starts with {text[:20]!r})"
    return f"not a PyTorch file (it starts with the bytes {head[:4].hex(' ')})"


def _load_error(path: Path, err: BaseException, head: bytes = b"") -> str:
    """A one-line reason for a failed ``torch.load(weights_only=True)``, without torch's advice."""
    import re

    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if found:
        return (
            f"it holds a Python object ({found.group(1)}) besides tensors and plain data, and "
            "loading that could run code, so deepframe refuses the file"
        )
    if isinstance(err, EOFError) or "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupt"
    if "Unsupported operand" in text or isinstance(err, __import__("pickle").UnpicklingError):
        return "not a PyTorch checkpoint (a pickle that holds more than tensors and plain data)"
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive without PyTorch's layout (another program's file, or damaged)"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"unreadable ({first[:120]})"


def _check_state(path: Path, state: dict, training: bool) -> None:
    """Types of the fields a checkpoint must have; a clear error for each wrong one."""
    required = ("epoch", "model", "optimizer", "config", "history") if training else ("model",)
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"{path}: deepframe checkpoint lacks {', '.join(missing)}")
    expected = {
        "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "model": lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())
        ),
        # a weights-only checkpoint (training=False) may say "no optimizer state"
        "optimizer": lambda v: isinstance(v, dict) or (v is None and not training),
        "config": lambda v: isinstance(v, dict),
        "history": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "metadata": lambda v: v is None or isinstance(v, dict),
    }
    for key, ok in expected.items():
        if key in state and not ok(state[key]):
            raise ValueError(
                f"{path}: the checkpoint's {key!r} entry is invalid ({type(state[key]).__name__} "
                f"{str(state[key])[:60]!r}); the file is damaged or was edited"
            )


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, training: bool = True
) -> dict:
    """Read a deepframe checkpoint with ``torch.load(..., weights_only=True)``.

    Loading never runs code from the file. Every failure is one line naming
    the path and the reason; torch's own advice to retry with
    ``weights_only=False`` is never passed on.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    map_location : str or torch.device
        Where the tensors go (checked to exist on this machine).
    training : bool
        Require the training state (``epoch``, ``optimizer``, ``config``,
        ``history``) besides the weights; ``False`` accepts a weights-only
        checkpoint (``model`` and ``metadata``).

    Returns
    -------
    dict
        Keys ``format``, ``version``, ``epoch`` (completed epochs), ``model``
        (state dict), ``optimizer``, ``scheduler`` (or None), ``config``
        (training settings), ``history`` (the per-epoch records) and
        ``metadata`` (what the caller passed to :func:`train`, or None).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        ``path`` is a folder or unreadable, or not a deepframe checkpoint:
        empty, truncated, garbage, a text file, another program's file, a
        file holding Python objects, another layout version, or fields of
        the wrong type. The message names the path.
    """
    import warnings

    path = Path(path)
    if path.is_dir():
        hint = " (the checkpoint.pt inside it?)" if (path / CHECKPOINT_NAME).is_file() else ""
        raise ValueError(f"{path} is a folder: give the checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    map_location = check_device(map_location)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file ({err.strerror or err})") from None
    reason = _sniff(path, head)
    if reason is not None:
        raise ValueError(f"{path} is not a deepframe checkpoint: {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/EOF errors all mean "not a checkpoint"
        raise ValueError(
            f"{path} is not a deepframe checkpoint: {_load_error(path, err, head)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        what = (
            f"a dict with keys {', '.join(map(str, list(state)[:5]))}"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ValueError(
            f"{path} is not a deepframe checkpoint (no {CHECKPOINT_FORMAT!r} marker; the file "
            f"holds {what}): another program's PyTorch file?"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: deepframe checkpoint version {state.get('version')!r} is not supported "
            f"(this deepframe reads version {CHECKPOINT_VERSION})"
        )
    _check_state(path, state, training)
    return state


def model_metadata(graph, **compile_options: Any) -> dict:
    """Checkpoint metadata from which :func:`load_model` rebuilds a compiled solver.

    Pass the result as ``train(..., metadata=model_metadata(graph, method="deep",
    iterations=3, mean=..., std=...))``.

    Parameters
    ----------
    graph : networkx.DiGraph
        The architecture given to :func:`deepframe.compile`.
    **compile_options
        The keyword arguments given to :func:`deepframe.compile` (a ``dtype``
        is stored by name; ``device`` is not stored).

    Returns
    -------
    dict
        ``{"graph": node-link JSON text, "compile": options}``.
    """
    from .graph import dumps

    options = {k: v for k, v in compile_options.items() if k != "device"}
    if isinstance(options.get("dtype"), torch.dtype):
        options["dtype"] = str(options["dtype"]).removeprefix("torch.")
    for key in ("mean", "std"):
        if options.get(key) is not None:
            options[key] = [float(v) for v in options[key]]
    _check_plain(options, "compile options")
    return {"graph": dumps(graph), "compile": options}


_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _compile_options(path: Path, metadata: dict) -> dict:
    """The stored options of :func:`deepframe.compile`, checked (dtype, method, names)."""
    import inspect

    from .pursuit import METHODS, compile

    options = metadata.get("compile") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path}: the stored compile options are not a dict: {options!r:.60}")
    options = dict(options)
    known = set(inspect.signature(compile).parameters) - {"graph", "device"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{path}: the stored compile options name {', '.join(map(repr, unknown))}, which "
            "this deepframe's compile does not take (a checkpoint from another version?)"
        )
    if "dtype" in options:
        if options["dtype"] not in _DTYPES:
            raise ValueError(
                f"{path}: the stored dtype {options['dtype']!r} is not one of {', '.join(_DTYPES)}"
            )
        options["dtype"] = getattr(torch, options["dtype"])
    if "method" in options and options["method"] not in METHODS:
        raise ValueError(
            f"{path}: the stored method {options['method']!r} is not one of {', '.join(METHODS)}"
        )
    return options


def _nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names (with counts) of floating tensors that hold NaN or infinite entries."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            count = int((~torch.isfinite(t)).sum())
            if count:
                bad.append(f"{name} ({count} of {t.numel()})")
    return bad


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    check_finite: bool = True,
) -> nn.Module:
    """Rebuild the compiled solver stored in a checkpoint, with its trained weights.

    The checkpoint must carry :func:`model_metadata` (the architecture and
    the options of :func:`deepframe.compile`); the training state is not
    needed (a weights-only checkpoint loads). The model is returned in eval
    mode on ``map_location``.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    map_location : str or torch.device
        Device of the model (checked to exist here).
    check_finite : bool
        Refuse weights that hold NaN or infinite values (a diverged run).

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load_checkpoint`; ``ValueError`` also when the checkpoint
        does not record its architecture, when its stored architecture,
        dtype, method or other compile options are invalid, when its weights
        do not fit that architecture, and (``check_finite``) when a weight is
        not finite. Every message names the path.
    MemoryBudgetError
        The model would exceed the memory budget (see
        :func:`deepframe.dictionary.check_memory`).
    """
    from .graph import ArchitectureError, loads
    from .pursuit import compile

    path = Path(path)
    state = load_checkpoint(path, map_location=map_location, training=False)
    metadata = state.get("metadata") or {}
    if not isinstance(metadata.get("graph"), str):
        raise ValueError(
            f"{path} does not record its architecture: train with "
            "metadata=model_metadata(graph, **compile_options)"
        )
    options = _compile_options(path, metadata)
    if check_finite:
        bad = _nonfinite(state["model"])
        if bad:
            raise ValueError(
                f"{path}: the model's weights are not finite in {', '.join(bad[:3])}"
                f"{' and more' if len(bad) > 3 else ''}: the run diverged; retrain with a "
                "smaller learning rate"
            )
    try:
        graph = loads(metadata["graph"], where=f"{path} (stored architecture)")
    except ArchitectureError as exc:
        raise ValueError(str(exc)) from None
    try:
        model = compile(graph, **options, device=map_location)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ValueError(f"{path}: the stored compile options are invalid ({exc})") from None
    problem = _state_dict_problem(model, state["model"])
    if problem:
        raise ValueError(f"{path}: the stored weights do not fit its architecture ({problem})")
    model.load_state_dict(state["model"])
    return model.eval()


def _state_dict_problem(model: nn.Module, stored: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``stored`` cannot be loaded into ``model`` (missing/extra keys, shapes), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in stored]
    extra = [k for k in stored if k not in own]
    shapes = [
        f"{k} {tuple(stored[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in stored and tuple(stored[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    if shapes:
        parts.append(f"shape {', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''}")
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- helpers


def _distributed_setup(device: torch.device | str | None) -> tuple[int, int, bool, torch.device]:
    """Rank, world size, whether we created the process group, and the device."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if env_world > 1 else torch.cuda.current_device())
    created = False
    if dist.is_available() and not dist.is_initialized() and env_world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), created, device
    return 0, 1, created, device


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}] if decay else []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose 'sgd' or 'adam'")


def _make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str | None, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if schedule is None:
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "step":
        milestones = sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m > 0})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine', 'step' or None")


def _adversarial_config(adversarial: Mapping | None) -> dict | None:
    if adversarial is None:
        return None
    unknown = set(adversarial) - {"eps", "alpha"}
    if unknown or "eps" not in adversarial:
        raise ValueError(
            f"adversarial must be a dict with 'eps' and optional 'alpha', got {dict(adversarial)}"
        )
    eps = parse_eps(adversarial["eps"])
    alpha = parse_eps(adversarial.get("alpha", 1.25 * eps))
    return {"eps": eps, "alpha": alpha}


def _all_reduce(values: list[float], device: torch.device, world_size: int) -> list[float]:
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every ``world_size``-th sample from ``rank``: disjoint shards, no padding."""
    if world_size == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world_size))


def _evaluate(
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    fgsm_eps: float | None,
    device: torch.device,
) -> list[float]:
    """``[loss sum, clean correct, FGSM correct, count]`` over ``data``, model in eval mode."""
    loss = correct = robust = count = 0.0
    loader = make_loader(data, batch_size, shuffle=False)
    with _eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            if fgsm_eps is not None:
                with torch.no_grad():
                    robust += float((model(fgsm(model, x, y, fgsm_eps)).argmax(1) == y).sum())
            count += y.shape[0]
    return [loss, correct, robust, count]


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed torch's global CPU generator (and that of ``device`` if CUDA), nothing else."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index].manual_seed(seed)


def pursuit_objective(
    model: nn.Module, val_data: Dataset | None, *, max_samples: int = 256
) -> dict[str, float]:
    """The pursuit objective ``F(w^[T])`` after the last iteration, for the epoch log.

    The default ``extra_metrics`` of :func:`train`. For a model with
    ``encode(x, trace=True) -> (codes, trace)`` (the solvers of
    :func:`deepframe.compile`), returns ``{"objective": mean over samples of
    trace.objective[-1]}`` on the first ``max_samples`` validation images, in
    eval mode; for any other model, or without validation data, ``{}``.
    """
    encode = getattr(model, "encode", None)
    if val_data is None or not callable(encode) or len(val_data) == 0:
        return {}
    x = torch.stack([val_data[i][0] for i in range(min(max_samples, len(val_data)))])
    with _eval_mode(model), torch.no_grad():
        _, trace = encode(x.to(_model_device(model)), trace=True)
    objective = getattr(trace, "objective", None)
    if objective is None:
        return {}
    return {"objective": float(objective[-1].mean())}


def _refresh(model: nn.Module) -> None:
    refresh = getattr(model, "refresh_lipschitz", None)
    if callable(refresh):
        refresh()


def _write_log(path: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _graph_differences(old: str, new: str) -> list[str]:
    """What differs between two node-link architectures (as JSON text), briefly."""
    try:
        a, b = json.loads(old), json.loads(new)
        nodes_a = {str(n["id"]): n for n in a["nodes"]}
        nodes_b = {str(n["id"]): n for n in b["nodes"]}
        key_a = "edges" if "edges" in a else "links"
        key_b = "edges" if "edges" in b else "links"
        edges_a = {f"{e['source']}->{e['target']}": e for e in a[key_a]}
        edges_b = {f"{e['source']}->{e['target']}": e for e in b[key_b]}
    except (ValueError, KeyError, TypeError):
        return ["architecture: differs"]
    out = []
    for kind, old_items, new_items in (("node", nodes_a, nodes_b), ("edge", edges_a, edges_b)):
        gone = [k for k in old_items if k not in new_items]
        added = [k for k in new_items if k not in old_items]
        if gone:
            out.append(f"architecture: {kind}s {', '.join(gone[:4])} only in the checkpoint")
        if added:
            out.append(f"architecture: {kind}s {', '.join(added[:4])} only in this run")
        for k in old_items:
            if k not in new_items:
                continue
            x, y = old_items[k], new_items[k]
            for attr in sorted(set(x) | set(y)):
                if attr not in ("id", "source", "target") and x.get(attr) != y.get(attr):
                    old_value, new_value = x.get(attr), y.get(attr)
                    out.append(f"architecture: {kind} {k} {attr} {old_value!r} -> {new_value!r}")
    return out or ["architecture: differs"]


def resume_differences(state: Mapping, config: Mapping, metadata: Mapping | None) -> list[str]:
    """What a run with ``config`` and ``metadata`` changes against a checkpoint's ``state``.

    Compared: the settings that change the trajectory (seed, epochs, batch
    size, optimizer, lr, momentum, weight decay, schedule, adversarial
    training) and, when both the checkpoint and the run carry metadata, every
    metadata entry: the architecture (node-link text, compared node by node),
    the options of :func:`deepframe.compile` (method, iterations, ...) and
    anything else (e.g. the dataset).

    Returns
    -------
    list of str
        ``"name: stored -> requested"`` per difference; empty when resuming is safe.
    """
    stored = state.get("config") or {}
    out = [
        f"{k}: {stored.get(k)!r} -> {config[k]!r}"
        for k in _RESUME_KEYS
        if stored.get(k) != config[k]
    ]
    old = state.get("metadata")
    if not isinstance(old, Mapping) or metadata is None:
        return out
    for key in sorted(set(old) | set(metadata), key=str):
        a, b = old.get(key), metadata.get(key)
        if a == b:
            continue
        if key == "graph" and isinstance(a, str) and isinstance(b, str):
            out.extend(_graph_differences(a, b))
        elif key == "compile" and isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b), key=str)
                if a.get(k) != b.get(k)
            )
        else:
            out.append(f"{key}: {a!r:.60} -> {b!r:.60}")
    return out


def _training_config(
    *,
    epochs: int,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str | None = "cosine",
    seed: int = 0,
    fgsm_eps: float | str | None = None,
    adversarial: Mapping[str, float | str] | None = None,
) -> dict:
    """The settings of :func:`train`, checked up front, as stored in the checkpoint."""

    def integer(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def real(name, value, *, positive):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            relation = ">" if positive else ">="
            raise ValueError(f"{name} must be a finite number {relation} 0, got {value!r}")
        return float(value)

    config = {
        "seed": integer("seed", seed, 0),
        "epochs": integer("epochs", epochs, 1),
        "batch_size": integer("batch_size", batch_size, 1),
        "optimizer": optimizer,
        "lr": real("lr", lr, positive=True),
        "momentum": real("momentum", momentum, positive=False),
        "weight_decay": real("weight_decay", weight_decay, positive=False),
        "schedule": schedule,
        "adversarial": _adversarial_config(adversarial),
        "fgsm_eps": None if fgsm_eps is None else parse_eps(fgsm_eps),
    }
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'sgd' or 'adam'")
    if schedule not in ("cosine", "step", None):
        raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine', 'step' or None")
    return config


def resume_state(
    checkpoint_dir: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict | None:
    """The checkpoint a :func:`train` call would resume from, checked, before any work.

    ``settings`` are :func:`train`'s keyword arguments that matter here
    (``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``, ``schedule``, ``seed``, ``fgsm_eps``, ``adversarial``).
    Compare ``state["epoch"]`` with ``epochs`` to see whether the run is
    already complete.

    Returns
    -------
    dict or None
        The checkpoint (see :func:`load_checkpoint`), or None when
        ``checkpoint_dir`` holds none.

    Raises
    ------
    ValueError
        A setting is invalid, or the checkpoint is not a deepframe checkpoint.
    ResumeMismatchError
        The checkpoint was trained with other settings or another model
        (the message lists every difference).
    """
    config = _training_config(**settings)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    if differences:
        raise ResumeMismatchError(path, differences)
    return state


def _resume(
    path: Path,
    config: dict,
    metadata: Mapping | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> tuple[int, list[dict]]:
    """Load a checkpoint into model, optimizer and scheduler; return (epoch, history)."""
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    problem = _state_dict_problem(model, state["model"])
    if problem:
        differences.append(f"model: the stored weights do not fit this model ({problem})")
    if differences:
        raise ResumeMismatchError(path, differences)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), [dict(record) for record in state["history"]]


def _train_epoch(
    train_model: nn.Module,
    model: nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    adversarial: dict | None,
    attack_generator: torch.Generator,
    device: torch.device,
    world_size: int,
) -> dict:
    """One pass over this rank's batches; loss and accuracy summed over all ranks.

    ``train_model`` is what the optimizer steps through (the DDP wrapper when
    distributed), ``model`` the plain module (hooks, attacks: rank-local work
    that must not trigger DDP's gradient synchronisation).
    """
    train_model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    lr = optimizer.param_groups[0]["lr"]
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        _refresh(model)
        if adversarial is not None:  # FGSM with random start (Wong et al. 2020)
            x = pgd(
                model,
                x,
                y,
                adversarial["eps"],
                steps=1,
                step_size=adversarial["alpha"],
                random_start=True,
                generator=attack_generator,
            )
        optimizer.zero_grad(set_to_none=True)
        logits = train_model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().to(torch.float64) * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        count += y.shape[0]
    total_loss, total_correct, total = _all_reduce(
        [float(loss_sum), float(correct), float(count)], device, world_size
    )
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"training diverged: the epoch's loss is {total_loss}")
    return {"train_loss": total_loss / total, "train_acc": total_correct / total, "lr": lr}


def _validation_metrics(
    model: nn.Module,
    val_data: Dataset | None,
    batch_size: int,
    fgsm_eps: float | None,
    device: torch.device,
    rank: int,
    world_size: int,
) -> dict:
    """Validation loss, accuracy and FGSM accuracy, each rank on its shard, summed."""
    record = {"val_loss": None, "val_acc": None, "fgsm_eps": fgsm_eps, "val_fgsm_acc": None}
    if val_data is None:
        return record
    loss, correct, robust, count = _all_reduce(
        _evaluate(model, _shard(val_data, rank, world_size), batch_size, fgsm_eps, device),
        device,
        world_size,
    )
    if count == 0:
        raise ValueError("val_data is empty")
    record["val_loss"] = loss / count
    record["val_acc"] = correct / count
    if fgsm_eps is not None:
        record["val_fgsm_acc"] = robust / count
    return record


# --------------------------------------------------------------------------- train


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    epochs: int,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str | None = "cosine",
    seed: int = 0,
    fgsm_eps: float | str | None = None,
    adversarial: Mapping[str, float | str] | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
    extra_metrics: Callable[[nn.Module, Dataset | None], Mapping[str, float]]
    | None = pursuit_objective,
    on_epoch_end: Callable[[dict], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
    eval_batch_size: int = 512,
    num_workers: int = 0,
) -> list[dict]:
    r"""Train a classifier of [0, 1] images with cross-entropy (docs/training.md).

    Each step minimises the mean cross-entropy of a batch,
    ``J = -1/B sum_i log softmax(model(x_i))_{y_i}``, with SGD (momentum, no
    Nesterov) or Adam. Weight decay (an L2 penalty) applies to weight
    matrices and kernels (parameters with >= 2 dimensions) only: biases,
    thresholds ``lambda``, step sizes ``beta`` and normalisation parameters
    are not decayed. The learning rate follows a per-epoch schedule:
    ``"cosine"`` (``CosineAnnealingLR`` with ``T_max = epochs``) or
    ``"step"`` (x0.1 after 1/2 and 3/4 of the epochs).

    If the model has a method ``refresh_lipschitz()`` (the pursuit solvers of
    :func:`deepframe.compile`), it is called before every training step and
    once before each evaluation, so step sizes ``1/L_j`` follow the weights.

    Adversarial training (``adversarial={"eps": e, "alpha": a}``) is FGSM
    with a random start (Wong, Rice & Kolter 2020): each batch is replaced by
    ``clip_[0,1](Pi_eps(x + u + a sign(grad_x J(x + u, y))))`` with
    ``u ~ U[-e, e]``, i.e. :func:`deepframe.attacks.pgd` with one step of
    size ``a`` (default ``1.25 e``), crafted in eval mode.

    After every epoch the validation accuracy, and with ``fgsm_eps`` the
    accuracy under FGSM (Eq. 19) at that eps, are measured. One JSON record
    per epoch is appended to ``log_path`` (JSON lines) with the keys
    ``epoch`` (1-based), ``train_loss``, ``train_acc`` (on the batches the
    optimizer saw, adversarial ones in adversarial training, averaged over
    the epoch), ``val_loss``, ``val_acc``, ``fgsm_eps``, ``val_fgsm_acc``
    (None when not measured), ``lr`` (used during the epoch), ``time``
    (seconds) and whatever ``extra_metrics`` returns (e.g. the pursuit
    ``objective``).

    Checkpoints. With ``checkpoint_dir``, ``checkpoint_dir/checkpoint.pt`` is
    replaced atomically after every epoch (see :func:`save_checkpoint`). With
    ``resume=True`` an existing checkpoint is loaded and training continues
    after its epoch; the result equals an uninterrupted run bit for bit on
    CPU, because every random stream of an epoch is seeded from
    ``(seed, epoch)``. Resuming with settings that change the trajectory
    (seed, epochs, batch size, optimizer, lr, momentum, weight decay,
    schedule, adversarial training), with other ``metadata`` (architecture,
    compile options, dataset) or with weights that do not fit ``model`` is
    refused with :class:`ResumeMismatchError`, which lists every difference
    (see :func:`resume_differences`; :func:`resume_state` runs the same
    checks without training).

    Every setting is checked before any work: ``epochs`` and ``batch_size``
    integers >= 1, ``seed`` an integer >= 0, ``lr`` finite and > 0,
    ``momentum`` and ``weight_decay`` finite and >= 0, a known optimizer and
    schedule, eps values that parse, and a ``device`` that exists here.

    Distributed. Under ``torchrun`` (environment variable ``WORLD_SIZE > 1``)
    the process group is initialised here (nccl for CUDA devices, gloo
    otherwise) unless it already is, the model is wrapped in
    DistributedDataParallel and each rank reads its shard of every global
    batch: ``batch_size`` is the *global* batch size and must be divisible
    by the number of processes. Metrics are summed over ranks; only rank 0
    writes the log and the checkpoint.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1] (normalisation inside), trained in
        place and moved to ``device``.
    train_data, val_data : Dataset
        ``(x, y)`` datasets; ``val_data`` may be None. A dataset with a
        ``set_epoch(epoch)`` method (augmentation) is told the epoch.
    epochs : int
        Total number of epochs (a resumed run counts the finished ones).
    batch_size : int
        Global batch size.
    optimizer : {"sgd", "adam"}
        Optimizer.
    lr, momentum, weight_decay : float
        Learning rate, SGD momentum (ignored by Adam), L2 weight decay.
    schedule : {"cosine", "step", None}
        Learning-rate schedule.
    seed : int
        Seed of every random stream.
    fgsm_eps : float or str, optional
        eps of the per-epoch FGSM validation accuracy (``"8/255"`` accepted).
    adversarial : dict, optional
        ``{"eps": ..., "alpha": ...}`` for FGSM adversarial training.
    log_path : str or Path, optional
        JSON-lines log (rank 0 writes it).
    checkpoint_dir : str or Path, optional
        Folder of ``checkpoint.pt`` (rank 0 writes it).
    resume : bool
        Continue from an existing checkpoint (else start over and overwrite).
    progress : bool
        Show a tqdm progress bar (rank 0).
    device : torch.device or str, optional
        Default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    extra_metrics : callable, optional
        ``extra_metrics(model, val_data) -> {name: float}``, called on every
        rank after each epoch (model in training mode; put it in eval mode
        yourself if needed); its items join the record. Default
        :func:`pursuit_objective` (the key ``objective`` for pursuit solvers,
        nothing for other models); None for no extra metrics.
    on_epoch_end : callable, optional
        ``on_epoch_end(record)``, called on every rank after the log and the
        checkpoint are written.
    metadata : dict, optional
        Stored as is in the checkpoint (e.g. the architecture and the pursuit
        method, for rebuilding the model); plain values only.
    eval_batch_size : int
        Batch size of the evaluation.
    num_workers : int
        DataLoader worker processes.

    Returns
    -------
    list of dict
        The per-epoch records of the whole run (including resumed epochs).

    Raises
    ------
    ValueError
        An invalid setting or device (before any work), or an existing
        checkpoint that is not a deepframe checkpoint.
    ResumeMismatchError
        ``resume=True`` and the checkpoint was trained with other settings,
        metadata or model.
    FloatingPointError
        The loss of an epoch is not finite (the run diverged).
    """
    from tqdm.auto import tqdm

    config = _training_config(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        fgsm_eps=fgsm_eps,
        adversarial=adversarial,
    )
    eps_eval, adversarial_cfg = config["fgsm_eps"], config["adversarial"]
    if metadata is not None:
        _check_plain(dict(metadata), "metadata")

    rank, world_size, created_group, device = _distributed_setup(device)
    try:
        if batch_size < world_size or batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} (global) must be a multiple of the {world_size} processes"
            )
        model.to(device)
        optim = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
        scheduler = _make_scheduler(optim, schedule, epochs)
        checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        start_epoch, history = 0, []
        if checkpoint_path is not None and resume and checkpoint_path.exists():
            start_epoch, history = _resume(
                checkpoint_path, config, metadata, model, optim, scheduler
            )
        if rank == 0 and log_path is not None:
            _write_log(Path(log_path), history)

        train_model: nn.Module = model
        if world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            for epoch in range(start_epoch, epochs):
                started = time.perf_counter()
                _seed_global_rng(derive_seed(seed, epoch, rank, 0), device)
                if callable(getattr(train_data, "set_epoch", None)):
                    train_data.set_epoch(epoch)
                loader = make_loader(
                    train_data,
                    batch_size // world_size,
                    shuffle=True,
                    seed=seed,
                    epoch=epoch,
                    rank=rank,
                    world_size=world_size,
                    num_workers=num_workers,
                    pin_memory=device.type == "cuda",
                )
                bar = tqdm(
                    loader,
                    desc=f"epoch {epoch + 1}/{epochs}",
                    disable=not progress or rank != 0,
                    leave=False,
                )
                record = {"epoch": epoch + 1}
                record.update(
                    _train_epoch(
                        train_model,
                        model,
                        bar,
                        optim,
                        adversarial_cfg,
                        torch.Generator(device=device).manual_seed(
                            derive_seed(seed, epoch, rank, 1)
                        ),
                        device,
                        world_size,
                    )
                )
                if scheduler is not None:
                    scheduler.step()
                _refresh(model)
                record.update(
                    _validation_metrics(
                        model, val_data, eval_batch_size, eps_eval, device, rank, world_size
                    )
                )
                if extra_metrics is not None:
                    for key, value in dict(extra_metrics(model, val_data)).items():
                        if key in _RECORD_KEYS:
                            raise ValueError(f"extra_metrics may not override {key!r}")
                        record[key] = value if value is None else float(value)
                record["time"] = time.perf_counter() - started
                history.append(record)

                if rank == 0:
                    if log_path is not None:
                        _append_log(Path(log_path), record)
                    if checkpoint_path is not None:
                        save_checkpoint(
                            checkpoint_path,
                            {
                                "epoch": epoch + 1,
                                "model": model.state_dict(),
                                "optimizer": optim.state_dict(),
                                "scheduler": None if scheduler is None else scheduler.state_dict(),
                                "config": config,
                                "history": history,
                                "metadata": None if metadata is None else dict(metadata),
                            },
                        )
                    if progress:
                        summary = ", ".join(
                            f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)
                        )
                        tqdm.write(f"epoch {epoch + 1}/{epochs}: {summary}")
                if on_epoch_end is not None:
                    on_epoch_end(record)
        return history
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
