"""Checkpoints: the file format, safe loading, the model metadata, :func:`load_model`.

A deepframe checkpoint is a dict written with :func:`torch.save` and read
back with ``torch.load(..., weights_only=True)``, so loading one never runs
code from the file. Its keys (docs/training.md, "Checkpoints"):

``format``
    :data:`CHECKPOINT_FORMAT`, the marker of a deepframe checkpoint.
``version``
    :data:`CHECKPOINT_VERSION`, the layout.
``epoch``, ``model``, ``optimizer``, ``scheduler``, ``config``, ``history``
    The training state :func:`deepframe.train.train` resumes from (a
    weights-only checkpoint has ``optimizer=None``).
``metadata``
    What rebuilds the model: :func:`model_metadata` (the architecture as
    node-link JSON text and the options of :func:`deepframe.compile`, plus
    the data set it was trained on), or None.

Files are replaced atomically (:func:`save_checkpoint`): a reader sees the old
checkpoint or the new one, never a partial file.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._device import check_device
from ._io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "architecture_differences",
    "check_storable",
    "load_checkpoint",
    "load_model",
    "model_metadata",
    "read_torch_file",
    "save_checkpoint",
    "state_dict_mismatch",
]

#: Marker stored under the key ``"format"`` of every deepframe checkpoint.
CHECKPOINT_FORMAT = "deepframe-checkpoint"
#: Version of the checkpoint layout.
CHECKPOINT_VERSION = 1
#: File name of the checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------- writing


def check_storable(value: Any, where: str) -> None:
    """Refuse a value that ``torch.load(weights_only=True)`` could not read back.

    Storable are None, bools, ints, floats, strings, tensors, and lists,
    tuples and dicts (with str or int keys) of storable values, nested.
    :func:`save_checkpoint` checks the whole state with it;
    :func:`deepframe.train.train` checks its ``metadata`` up front, before any work.

    Parameters
    ----------
    value : object
        What is to be stored.
    where : str
        Its name in the error message (e.g. ``"metadata"``).

    Raises
    ------
    ValueError
        ``value`` or something inside it is not storable; the message names
        the path to it (``metadata['graph'][0]``).
    """
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_storable(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise ValueError(f"{where}: key {key!r} is not a str or int")
            check_storable(item, f"{where}[{key!r}]")
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
    check_storable(payload, "checkpoint")
    atomic_write(Path(path), lambda f: torch.save(payload, f))


# --------------------------------------------------------------------------- reading


_ZIP_MAGIC = b"PK\x03\x04"


def _sniff(head: bytes) -> str | None:
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _plain(text: str) -> str:
    """``text`` without ANSI escape sequences and control characters, on one line."""
    text = _ANSI.sub("", text)
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _pickle_opcodes(path: Path, limit: int = 1 << 24):
    """The opcodes of the pickle in a torch file (its ``data.pkl``), parsed, never run.

    Yields ``(name, argument)`` pairs; stops quietly at what it cannot parse
    (or after ``limit`` bytes of pickle).
    """
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return
                with archive.open(name) as f:
                    data = f.read(limit)
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            yield op.name, arg
    except Exception:  # noqa: BLE001 - a damaged pickle: what was read is the answer
        return


def _pickled_object(path: Path, name: str) -> str:
    """What a torch file that holds the Python object ``name`` is, from its pickle: a whole
    ``nn.Module`` (its ``__dict__`` holds ``_parameters`` and ``_modules``) or another object."""
    strings = set()
    for _, arg in _pickle_opcodes(path):
        if isinstance(arg, str) and len(arg) < 64:
            strings.add(arg)
        if {"_parameters", "_modules"} <= strings:
            return (
                f"a whole pickled torch module ({name}), not a state dict: save "
                "model.state_dict() instead (loading a pickled module runs code from the "
                "file, so deepframe refuses it)"
            )
    return (
        f"it holds a Python object ({name}) besides tensors and plain data, and loading that "
        "could run code, so deepframe refuses the file"
    )


def _load_error(err: BaseException, head: bytes = b"", path: Path | None = None) -> str:
    """A one-line reason for a failed ``torch.load(weights_only=True)``, without torch's advice."""
    text = _plain(str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if found:
        if path is not None:
            return _pickled_object(path, found.group(1))
        return (
            f"it holds a Python object ({found.group(1)}) besides tensors and plain data, and "
            "loading that could run code, so deepframe refuses the file"
        )
    if isinstance(err, EOFError) or "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupt"
    if "Unsupported operand" in text or isinstance(err, pickle.UnpicklingError):
        return "not a PyTorch checkpoint (a pickle that holds more than tensors and plain data)"
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive without PyTorch's layout (another program's file, or damaged)"
    lines = str(err).strip().splitlines()
    first = _plain(lines[0]) if lines else type(err).__name__
    return f"unreadable ({first[:120]})"


def read_torch_file(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    what: str = "deepframe checkpoint",
    missing: str = "checkpoint not found",
) -> Any:
    """The object in a PyTorch file, read with ``torch.load(..., weights_only=True)``.

    The one loader rule of deepframe for files a user hands it (checkpoints,
    :func:`load_checkpoint`; foreign weights files,
    :func:`deepframe.interop.load_state_dict`): loading never runs code from
    the file, and every failure is one line naming the path and what the file
    is (empty, a text file, not a PyTorch file, truncated, a whole pickled
    ``nn.Module`` rather than a state dict, another Python object); torch's own
    advice to retry with ``weights_only=False`` and its escape sequences are
    never passed on.

    Parameters
    ----------
    path : str or Path
        The file.
    map_location : str or torch.device
        Where the tensors go (checked to exist on this machine).
    what : str
        What the file should be, for the message (``"{path} is not a {what}: ..."``).
    missing : str
        The message's start when there is no file (``"{missing}: {path}"``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        ``path`` is a folder, unreadable, or not a PyTorch file that
        ``weights_only=True`` reads.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{missing}: {path}")
    map_location = check_device(map_location)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file ({err.strerror or err})") from None
    reason = _sniff(head)
    if reason is not None:
        raise ValueError(f"{path} is not a {what}: {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/EOF errors all mean "not such a file"
        raise ValueError(f"{path} is not a {what}: {_load_error(err, head, path)}") from None


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

    Loading never runs code from the file (:func:`read_torch_file`, the
    rule for every file deepframe loads). Every failure is one line naming
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
        ``metadata`` (what the caller passed to :func:`deepframe.train.train`, or None).

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
    path = Path(path)
    if path.is_dir():
        hint = " (the checkpoint.pt inside it?)" if (path / CHECKPOINT_NAME).is_file() else ""
        raise ValueError(f"{path} is a folder: give the checkpoint file{hint}")
    state = read_torch_file(path, map_location)
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


# --------------------------------------------------------------------------- the model


def model_metadata(graph, *, dataset: str | None = None, **compile_options: Any) -> dict:
    """Checkpoint metadata from which :func:`load_model` rebuilds a compiled solver.

    The one place that builds it: ``deepframe train`` and the reproduction
    (:mod:`deepframe.experiments`) both call it. Pass the result as
    ``train(..., metadata=model_metadata(graph, method="deep", iterations=3,
    mean=..., std=...))``.

    Parameters
    ----------
    graph : networkx.DiGraph
        The architecture given to :func:`deepframe.compile`.
    dataset : str, optional
        Name of the data set the model is trained on (a key of
        :data:`deepframe.data.DATASETS`); ``deepframe attack`` reads it.
    **compile_options
        The keyword arguments given to :func:`deepframe.compile` (a ``dtype``
        is stored by name; ``device`` is not stored).

    Returns
    -------
    dict
        ``{"graph": node-link JSON text, "compile": options}``, and
        ``"dataset"`` when given.
    """
    from .graph import dumps

    options = {k: v for k, v in compile_options.items() if k != "device"}
    if isinstance(options.get("dtype"), torch.dtype):
        options["dtype"] = str(options["dtype"]).removeprefix("torch.")
    for key in ("mean", "std"):
        if options.get(key) is not None:
            options[key] = [float(v) for v in options[key]]
    check_storable(options, "compile options")
    metadata = {"graph": dumps(graph), "compile": options}
    if dataset is not None:
        if not isinstance(dataset, str):
            raise ValueError(f"dataset must be a data set's name (a str), got {dataset!r}")
        metadata["dataset"] = dataset
    return metadata


_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _compile_options(path: Path, metadata: dict) -> tuple[dict, Any]:
    """The stored options of :func:`deepframe.compile`, checked: names, the dtype's
    name, then every value by the rules ``compile`` applies
    (:class:`~deepframe.pursuit.CompileOptions`). Returns the keyword arguments of
    ``compile`` and the validated options."""
    import inspect

    from .pursuit import CompileOptions, compile

    options = metadata.get("compile") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path}: the stored compile options are not a dict: {options!r:.60}")
    options = dict(options)
    known = set(inspect.signature(compile).parameters) - {"graph", "device"}
    unknown = sorted(set(options) - known, key=str)
    if unknown:
        raise ValueError(
            f"{path}: the stored compile options name {', '.join(map(repr, unknown))}, which "
            "this deepframe's compile does not take (a checkpoint from another version?)"
        )
    if "dtype" in options:
        if not isinstance(options["dtype"], str) or options["dtype"] not in _DTYPES:
            raise ValueError(
                f"{path}: the stored dtype {options['dtype']!r:.60} is not one of "
                f"{', '.join(_DTYPES)}"
            )
        options["dtype"] = getattr(torch, options["dtype"])
    try:
        checked = CompileOptions(**{k: v for k, v in options.items() if k != "weights"})
    except (TypeError, ValueError) as exc:
        reason = _plain(str(exc)).removeprefix("compile: ")
        raise ValueError(f"{path}: the stored compile options are invalid: {reason}") from None
    return options, checked


def _check_build_memory(path: Path, graph, options) -> None:
    """Refuse, before building it, a stored model whose build exceeds the memory budget
    (its weights and head, the Lipschitz bounds, the state of its ``T`` iterations)."""
    from .memory import MemoryBudgetError, Unroll, check_memory
    from .terms import structure

    what = "pursuit" if options.iterates else "weights"
    try:
        check_memory(
            structure(graph), what, dtype=options.dtype, unroll=Unroll.from_options(options)
        )
    except MemoryBudgetError as exc:
        raise MemoryBudgetError(f"{path}: the stored model: {exc}") from None


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
        does not record its architecture, when its stored architecture or
        any stored compile option is invalid (names, types and ranges: the
        rules of :func:`deepframe.compile`, checked by constructing a
        :class:`~deepframe.pursuit.CompileOptions`), when its weights do not
        fit that architecture, and (``check_finite``) when a weight is not
        finite. Every message names the path.
    MemoryBudgetError
        Before anything is built: the stored model (its weights, head,
        Lipschitz bounds and the state of its ``T`` iterations, e.g. a stored
        ``iterations=10**9``) would exceed the memory budget
        (:func:`deepframe.memory.check_memory`).
    """
    from .graph import ArchitectureError, loads, validate
    from .pursuit import compile

    path = Path(path)
    state = load_checkpoint(path, map_location=map_location, training=False)
    metadata = state.get("metadata") or {}
    if not isinstance(metadata.get("graph"), str):
        raise ValueError(
            f"{path} does not record its architecture: train with "
            "metadata=model_metadata(graph, **compile_options)"
        )
    options, checked = _compile_options(path, metadata)
    if check_finite:
        bad = _nonfinite(state["model"])
        if bad:
            raise ValueError(
                f"{path}: the model's weights are not finite in {', '.join(bad[:3])}"
                f"{' and more' if len(bad) > 3 else ''}: the run diverged; retrain with a "
                "smaller learning rate"
            )
    try:
        graph = validate(loads(metadata["graph"], where=f"{path} (stored architecture)"))
    except ArchitectureError as exc:
        raise ValueError(str(exc)) from None
    _check_build_memory(path, graph, checked)
    try:
        model = compile(graph, **options, device=map_location)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ValueError(f"{path}: the stored compile options are invalid ({exc})") from None
    problem = state_dict_mismatch(model, state["model"])
    if problem:
        raise ValueError(f"{path}: the stored weights do not fit its architecture ({problem})")
    model.load_state_dict(state["model"])
    return model.eval()


# --------------------------------------------------------------------------- comparing


def state_dict_mismatch(model: nn.Module, stored: Mapping[str, torch.Tensor]) -> str | None:
    """Why the weights ``stored`` cannot be loaded into ``model``, or None when they can.

    Compares the keys and the shapes of ``stored`` with ``model.state_dict()``
    (no tensor values): missing keys, unexpected keys and shapes that differ,
    up to three of each.

    Returns
    -------
    str or None
        One line such as ``"missing a.weight; shape b (3, 4) vs (4, 4)"``.
    """
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


def architecture_differences(old: str, new: str) -> list[str]:
    """What differs between two architectures given as node-link JSON text, briefly.

    Nodes and edges present in only one of them (up to four of each), then
    every attribute that differs on a node or edge present in both, as
    ``"architecture: node b1 bias 0.0 -> 0.1"``. Text that is not node-link
    JSON gives the single entry ``"architecture: differs"``.

    Parameters
    ----------
    old, new : str
        The stored architecture and the requested one (see
        :func:`deepframe.graph.dumps`).

    Returns
    -------
    list of str
        One entry per difference; ``["architecture: differs"]`` when the
        texts differ only in a way this does not name.
    """
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
