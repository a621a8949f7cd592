"""White-box L-inf attacks (FGSM, PGD), accuracy per eps, gradient-masking audit.

Threat model (docs/robustness.md): the attacker knows the whole model and perturbs each
input image ``x`` in [0, 1] by at most ``eps`` per pixel (L-inf ball), staying
in [0, 1]. ``eps`` is in pixel units of the [0, 1] image (``8/255`` is eight
grey levels); normalisation lives inside the model, so it does not change
``eps``. Gradients flow through the whole model, every unrolled pursuit
iteration included: nothing is detached.

The model is any :class:`torch.nn.Module` mapping ``(B, *input_shape)`` images
to ``(B, num_classes)`` logits, for instance ``deepframe.compile(...)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._inputs import check_images

__all__ = [
    "AuditCheck",
    "AuditReport",
    "Evaluation",
    "accuracy",
    "audit",
    "eval_mode",
    "evaluate",
    "fgsm",
    "model_device",
    "parse_eps",
    "parse_eps_list",
    "pgd",
    "pgd_step_size",
    "robust_accuracy",
]

#: What :func:`evaluate`, :func:`accuracy`, :func:`robust_accuracy` and :func:`audit`
#: accept as data.
Data = DataLoader | Dataset | tuple[torch.Tensor, torch.Tensor] | Iterable


def parse_eps(value: str | float | int) -> float:
    """Read an eps given as a number or a string such as ``"8/255"`` or ``"0.03"``.

    Raises
    ------
    ValueError
        Not a number, negative, or not finite.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            eps = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(
                f"cannot read eps {value!r}: use a number or a fraction like 8/255"
            ) from err
    else:
        eps = float(value)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {value!r}")
    return eps


def parse_eps_list(values: str | Sequence[str | float]) -> list[float]:
    """Read a comma-separated list (``"1/255,2/255,4/255,8/255"``) or a sequence of eps."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    eps = [parse_eps(v) for v in values]
    if not eps:
        raise ValueError("empty list of eps")
    return eps


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode; restore each one's own flag afterwards.

    Unlike ``model.eval()`` followed by ``model.train()``, a submodule that
    was in eval mode before (e.g. frozen batch norm) stays so. Every attack
    and evaluation of this module runs inside it.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_inputs(x: torch.Tensor, y: torch.Tensor, eps: float, where: str) -> None:
    """The images by the input rule (:func:`deepframe._inputs.check_images`), in [0, 1],
    one label each; eps already read by :func:`parse_eps`."""
    check_images(x, where=where)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("images must lie in [0, 1] (normalisation belongs inside the model)")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def _check_attack_memory(model: nn.Module, data, batch_size: int) -> None:
    """Refuse, before any work, an attack whose gradient would exceed the memory budget.

    FGSM and PGD backpropagate through the whole model, every unrolled
    pursuit iteration included: autograd keeps each iteration's activations
    (:func:`deepframe.memory.check_model_memory`, ``"attack"``, at the
    largest batch of ``data``: the images themselves, a pair of tensors, a
    Dataset or a DataLoader, also wrapped in a progress bar; other iterables
    are checked batch by batch). Models that are not compiled solvers pass.
    """
    from .memory import check_model_memory

    if isinstance(data, torch.Tensor):
        batch = data.shape[0]
    elif isinstance(data, tuple | list) and data and isinstance(data[0], torch.Tensor):
        batch = min(batch_size, data[0].shape[0])
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        batch = min(batch_size, len(data))
    else:  # a DataLoader (its batch_size), possibly inside tqdm (its iterable)
        loader = getattr(data, "iterable", data)
        batch = getattr(loader, "batch_size", None)
        if not isinstance(batch, int):
            return
        if hasattr(getattr(loader, "dataset", None), "__len__"):
            batch = min(batch, len(loader.dataset))
    check_model_memory(model, "attack", max(1, batch))


def _loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d J(x, y) / d x`` with J the cross-entropy of each sample (summed over the batch).

    Summing (not averaging) keeps each sample's gradient exactly its own and
    unscaled. Only the input gradient is computed: parameter ``.grad`` fields
    are left untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Fast gradient sign method, Eq. 19 of the seed paper, clipped to [0, 1].

    .. math::

        \tilde{x} = \operatorname{clip}_{[0, 1]}\Big(x + \epsilon \cdot
        \operatorname{sign}\big(\partial J(x, y) / \partial x\big)\Big)  \qquad (19)

    with ``J`` the cross-entropy of the logits. The model is put in eval mode
    for the attack and each submodule's mode is restored afterwards; the
    gradient flows through the whole model (every pursuit iteration).

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1].
    x : Tensor
        Images ``(B, *input_shape)`` in [0, 1].
    y : Tensor
        Labels ``(B,)``.
    eps : float or str
        L-inf radius in pixel units (a string such as ``"8/255"`` is read by
        :func:`parse_eps`).

    Returns
    -------
    Tensor
        Adversarial images (detached), within ``eps`` of ``x`` and in [0, 1].
    """
    eps = parse_eps(eps)
    _check_inputs(x, y, eps, "fgsm")
    _check_attack_memory(model, x, x.shape[0])
    with eval_mode(model):
        grad = _loss_gradient(model, x, y)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def pgd_step_size(eps: float, steps: int) -> float:
    """PGD's default step ``eta = 2.5 eps / steps`` (Madry et al. 2018): the ball's
    radius crossed 2.5 times over the steps."""
    return 2.5 * float(eps) / int(steps)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Projected gradient descent on the loss, L-inf ball (Madry et al. 2018).

    Starting from ``x^0 = clip_[0,1](x + u)`` with ``u ~ U[-eps, eps]`` (or
    ``x^0 = x`` without random start), repeat ``steps`` times

    .. math::

        x^{k+1} = \operatorname{clip}_{[0, 1]}\Big(\Pi_{\|\cdot - x\|_\infty \le \epsilon}
        \big(x^k + \eta \operatorname{sign}(\partial J(x^k, y) / \partial x)\big)\Big)

    i.e. Eq. 19 iterated with step ``eta`` and projected back onto the eps-ball
    around ``x``. With ``steps=1``, ``step_size=eps`` and no random start it is
    exactly :func:`fgsm`. Model in eval mode, modes restored afterwards.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1].
    x, y : Tensor
        Images in [0, 1] and labels.
    eps : float or str
        L-inf radius in pixel units (or a string such as ``"8/255"``).
    steps : int
        Number of gradient steps.
    step_size : float, optional
        ``eta``; default ``2.5 * eps / steps`` (Madry et al.).
    random_start : bool
        Start from a uniform random point of the eps-ball.
    generator : torch.Generator, optional
        Source of the random start; default a new generator seeded with 0, so
        the attack is deterministic unless a generator is given.

    Returns
    -------
    Tensor
        Adversarial images (detached).
    """
    eps = parse_eps(eps)
    _check_inputs(x, y, eps, "pgd")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step_size = pgd_step_size(eps, steps) if step_size is None else float(step_size)
    if not math.isfinite(step_size) or step_size < 0:
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size}")
    _check_attack_memory(model, x, x.shape[0])
    x = x.detach()
    lower, upper = x - eps, x + eps
    x_adv = x
    if random_start:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        x_adv = (x + eps * (2 * noise.to(x.device) - 1)).clamp(0.0, 1.0)
    with eval_mode(model):
        for _ in range(steps):
            grad = _loss_gradient(model, x_adv, y)
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, lower), upper).clamp(0.0, 1.0)
    return x_adv


# --------------------------------------------------------------------------- evaluation


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else first buffer; CPU for neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _batches(
    data: Data, batch_size: int, device: torch.device, where: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches on ``device`` from a DataLoader, a Dataset or a pair of tensors,
    each checked by the input rule (:func:`deepframe._inputs.check_images`, naming
    ``where``) before the model sees it."""
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x_all, y_all = data
        if x_all.shape[0] != y_all.shape[0]:
            raise ValueError(f"{x_all.shape[0]} images but {y_all.shape[0]} labels")
        chunks = zip(x_all.split(batch_size), y_all.split(batch_size), strict=True)
    elif isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        chunks = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        chunks = data
    for x, y in chunks:
        yield check_images(x, where=where).to(device), y.to(device)


@dataclass(frozen=True)
class Evaluation:
    """Sums over the samples of one pass of :func:`evaluate`.

    Sums rather than means, so that passes over disjoint shards (one per
    process of a distributed run) add up; the properties give the means.

    Attributes
    ----------
    count : int
        Samples evaluated.
    loss_sum : float or None
        ``sum_i J(x_i, y_i)``, the cross-entropy of the clean logits summed
        over the samples (None unless asked for with ``evaluate(...,
        loss=True)``).
    correct : int
        Samples whose clean logits' arg-max is the label.
    robust_correct : dict
        ``{eps: samples classified correctly after the attack at eps}``
        (``eps = 0``: the clean count, no attack run).
    """

    count: int
    loss_sum: float | None
    correct: int
    robust_correct: dict[float, int] = field(default_factory=dict)

    def _share(self, value: float) -> float:
        if self.count == 0:
            raise ValueError("no samples to evaluate")
        return value / self.count

    @property
    def loss(self) -> float:
        """Mean cross-entropy ``1/n sum_i J(x_i, y_i)`` of the clean samples."""
        if self.loss_sum is None:
            raise ValueError("the loss was not measured: call evaluate(..., loss=True)")
        return self._share(self.loss_sum)

    @property
    def accuracy(self) -> float:
        """Share of clean samples classified correctly."""
        return self._share(self.correct)

    @property
    def robust_accuracy(self) -> dict[float, float]:
        """``{eps: share of samples classified correctly under the attack}``."""
        return {eps: self._share(c) for eps, c in self.robust_correct.items()}


def _attack_fn(attack: str, steps: int, step_size: float | None, random_start: bool):
    if attack == "fgsm":
        return lambda model, x, y, eps, generator: fgsm(model, x, y, eps)
    if attack == "pgd":
        return lambda model, x, y, eps, generator: pgd(
            model, x, y, eps, steps, step_size, random_start, generator
        )
    raise ValueError(f"unknown attack {attack!r}; choose 'fgsm' or 'pgd'")


def evaluate(
    model: nn.Module,
    data: Data,
    eps_list: Sequence[float | str] = (),
    attack: str = "fgsm",
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    loss: bool = False,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Evaluation:
    r"""One pass over ``data``: clean loss and accuracy, and accuracy under an attack per eps.

    The evaluation loop of the package: :func:`accuracy`,
    :func:`robust_accuracy` and the per-epoch validation of
    :func:`deepframe.train.train` are this function. For each batch, in
    order, the clean logits ``f(x)`` give the arg-max (and, with ``loss``, the
    cross-entropy ``J(x, y) = -log softmax(f(x))_y``); then, for each eps in
    the order given, the attack crafts ``x~`` from ``x`` (Eq. 19 for FGSM,
    :func:`pgd` for PGD; ``eps = 0`` reuses the clean logits) and
    ``arg max f(x~) = y`` is counted. The model is in eval mode throughout
    (:func:`eval_mode`); PGD's random starts come from one generator seeded
    with ``seed``, so the result is reproducible.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1].
    data : DataLoader, Dataset or (x, y) tensors
        Evaluation data, read in order.
    eps_list : sequence of float or str
        Radii in pixel units (strings such as ``"8/255"`` accepted); empty
        for no attack.
    attack : {"fgsm", "pgd"}
        :func:`fgsm` (Eq. 19) or :func:`pgd`.
    steps, step_size, random_start
        PGD settings (ignored for FGSM).
    seed : int
        Seed of PGD's random starts.
    loss : bool
        Also sum the clean cross-entropy (labels must then be class indices
        below the number of logits).
    batch_size : int
        Batch size when ``data`` is a Dataset or a pair of tensors.
    device : torch.device, optional
        Where to evaluate; default the model's device.

    Returns
    -------
    Evaluation
        The sums (an empty ``data`` gives zero counts; its means raise
        ``ValueError``).
    """
    eps_values = parse_eps_list(eps_list) if len(eps_list) else []
    run = _attack_fn(attack, steps, step_size, random_start)
    device = model_device(model) if device is None else torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    robust = dict.fromkeys(eps_values, 0)
    loss_sum, correct, count = (0.0 if loss else None), 0, 0
    if any(robust):  # an attack to run (eps = 0 reuses the clean logits)
        _check_attack_memory(model, data, batch_size)
    with eval_mode(model):
        for x, y in _batches(data, batch_size, device, "evaluate"):
            with torch.no_grad():
                logits = model(x)
            if loss:
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            hits = int((logits.argmax(1) == y).sum())
            correct += hits
            for eps in robust:
                if eps == 0:
                    robust[eps] += hits
                    continue
                x_adv = run(model, x, y, eps, generator)
                with torch.no_grad():
                    robust[eps] += int((model(x_adv).argmax(1) == y).sum())
            count += y.shape[0]
    return Evaluation(count=count, loss_sum=loss_sum, correct=correct, robust_correct=robust)


def accuracy(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> float:
    """Share of correctly classified samples (arg-max of the logits), model in eval mode.

    ``evaluate(model, data).accuracy`` (see :func:`evaluate`).

    Parameters
    ----------
    model : nn.Module
        Classifier.
    data : DataLoader, Dataset or (x, y) tensors
        Evaluation data, read in order.
    batch_size : int
        Batch size when ``data`` is a Dataset or a pair of tensors.
    device : torch.device, optional
        Where to evaluate; default the model's device.
    """
    return evaluate(model, data, batch_size=batch_size, device=device).accuracy


def robust_accuracy(
    model: nn.Module,
    data: Data,
    eps_list: Sequence[float | str],
    attack: str = "fgsm",
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[float, float]:
    """Accuracy under a white-box attack for each eps: ``{eps: accuracy}``.

    ``evaluate(model, data, eps_list, attack, ...).robust_accuracy`` (see
    :func:`evaluate`). ``eps = 0`` gives the clean accuracy. PGD's random
    starts come from one generator seeded with ``seed``, so the result is
    reproducible.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1].
    data : DataLoader, Dataset or (x, y) tensors
        Evaluation data.
    eps_list : sequence of float or str
        Radii in pixel units (strings such as ``"8/255"`` accepted).
    attack : {"fgsm", "pgd"}
        :func:`fgsm` (Eq. 19) or :func:`pgd`.
    steps, step_size, random_start
        PGD settings (ignored for FGSM).
    seed : int
        Seed of PGD's random starts.
    batch_size : int
        Batch size when ``data`` is a Dataset or a pair of tensors.
    device : torch.device, optional
        Default the model's device.
    """
    return evaluate(
        model,
        data,
        parse_eps_list(eps_list),
        attack,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        seed=seed,
        batch_size=batch_size,
        device=device,
    ).robust_accuracy


# --------------------------------------------------------------------------- audit


@dataclass
class AuditCheck:
    """One sanity check of :func:`audit`: its name, verdict and the numbers behind it."""

    name: str
    passed: bool
    detail: str


@dataclass
class AuditReport:
    """Result of :func:`audit`. ``str(report)`` is a readable table.

    Attributes
    ----------
    num_samples : int
        Samples evaluated.
    chance : float
        ``1 / num_classes``.
    clean_accuracy : float
        Accuracy without attack.
    fgsm, pgd : dict
        ``{eps: accuracy}`` under white-box FGSM (Eq. 19) and PGD.
    large_eps, large_eps_accuracy : float
        The large radius and PGD's accuracy there.
    zero_gradient_fraction : float
        Share of samples whose input gradient of the loss is exactly zero.
    transfer : dict or None
        ``{eps: accuracy}`` of the model on PGD examples crafted on the twin.
    checks : list of AuditCheck
        The verdicts.
    """

    num_samples: int
    chance: float
    clean_accuracy: float
    fgsm: dict[float, float]
    pgd: dict[float, float]
    large_eps: float
    large_eps_accuracy: float
    zero_gradient_fraction: float
    transfer: dict[float, float] | None
    checks: list[AuditCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check found a sign of gradient masking."""
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (eps keys as strings)."""
        out = asdict(self)
        for key in ("fgsm", "pgd", "transfer"):
            if out[key] is not None:
                out[key] = {repr(eps): acc for eps, acc in out[key].items()}
        out["passed"] = self.passed
        return out

    def __str__(self) -> str:
        lines = [
            f"gradient-masking audit on {self.num_samples} samples "
            f"(chance {self.chance:.3f}, clean accuracy {self.clean_accuracy:.4f})",
            f"{'eps':>10} {'fgsm':>8} {'pgd':>8}" + (f" {'transfer':>9}" if self.transfer else ""),
        ]
        for eps in self.fgsm:
            row = f"{eps:>10.5g} {self.fgsm[eps]:>8.4f} {self.pgd[eps]:>8.4f}"
            if self.transfer:
                row += f" {self.transfer[eps]:>9.4f}"
            lines.append(row)
        lines.append(f"pgd at large eps {self.large_eps:g}: {self.large_eps_accuracy:.4f}")
        lines.append(f"samples with all-zero input gradient: {self.zero_gradient_fraction:.4f}")
        for check in self.checks:
            lines.append(f"[{'pass' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
        lines.append("no sign of gradient masking" if self.passed else "POSSIBLE GRADIENT MASKING")
        return "\n".join(lines)


def _non_increasing(values: Sequence[float], tolerance: float) -> bool:
    return all(b <= a + tolerance for a, b in zip(values, values[1:], strict=False))


def audit(
    model: nn.Module,
    data: Data,
    eps_list: Sequence[float | str] = (1 / 255, 2 / 255, 4 / 255, 8 / 255),
    twin: nn.Module | None = None,
    *,
    large_eps: float | str = 0.5,
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
    tolerance: float = 0.01,
    chance_margin: float = 0.1,
    max_zero_gradient_fraction: float = 0.0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> AuditReport:
    """Sanity checks that expose gradient masking (docs/robustness.md, Carlini et al. 2019).

    A robustness number is only as good as the attack behind it. When the
    gradient the attack follows is useless (zero, shattered, random), a
    model looks robust without being so. Each check below is a symptom:

    1. *PGD <= FGSM*: the iterative attack contains FGSM as its first step, so
       it must not do worse (up to ``tolerance``) at any eps.
    2. *Accuracy non-increasing in eps*: a larger ball contains the smaller
       one; clean >= accuracy at eps_1 >= at eps_2 ..., for FGSM and for PGD
       (up to ``tolerance``).
    3. *Chance at large eps*: at ``large_eps`` (0.5 by default, enough to turn
       every image into the same flat grey one) PGD must bring accuracy to at
       most ``chance + chance_margin``.
    4. *No all-zero input gradients*: the share of samples whose loss gradient
       with respect to the input is exactly zero must not exceed
       ``max_zero_gradient_fraction``.
    5. *Transfer weaker than white-box* (only with ``twin``): PGD examples
       crafted on a twin (e.g. the feed-forward network with the same weights)
       and evaluated on the model must not beat the best white-box attack
       (FGSM or PGD) by more than ``tolerance``.

    Passing does not prove robustness; failing is a strong hint that the
    reported accuracies overestimate it.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1].
    data : DataLoader, Dataset or (x, y) tensors
        Evaluation data.
    eps_list : sequence of float or str
        Radii in pixel units.
    twin : nn.Module, optional
        Surrogate model with the same interface, for the transfer attack.
    large_eps : float or str
        Radius of check 3.
    steps, step_size
        PGD settings (random start always on).
    seed : int
        Seed of the PGD random starts.
    tolerance, chance_margin, max_zero_gradient_fraction : float
        Slack of checks 1-2 and 5, 3, and 4.
    batch_size : int
        Batch size when ``data`` is a Dataset or a pair of tensors.
    device : torch.device, optional
        Default the model's device.

    Returns
    -------
    AuditReport
    """
    eps_values = sorted(set(parse_eps_list(eps_list)))
    large_eps = parse_eps(large_eps)
    device = model_device(model) if device is None else torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def run_pgd(target: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return pgd(target, x, y, eps, steps, step_size, True, generator)

    def hits(x: torch.Tensor, y: torch.Tensor) -> int:
        with torch.no_grad():
            return int((model(x).argmax(1) == y).sum())

    counts: dict[str, dict[float, int]] = {
        "fgsm": dict.fromkeys(eps_values, 0),
        "pgd": dict.fromkeys(eps_values, 0),
        "transfer": dict.fromkeys(eps_values, 0),
    }
    _check_attack_memory(model, data, batch_size)
    clean = large = zero = total = 0
    num_classes = None
    contexts = [eval_mode(model)] + ([eval_mode(twin)] if twin is not None else [])
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        for x, y in _batches(data, batch_size, device, "audit"):
            with torch.no_grad():
                logits = model(x)
            num_classes = logits.shape[1]
            clean += int((logits.argmax(1) == y).sum())
            grad = _loss_gradient(model, x, y)
            zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
            for eps in eps_values:
                counts["fgsm"][eps] += hits(fgsm(model, x, y, eps), y)
                counts["pgd"][eps] += hits(run_pgd(model, x, y, eps), y)
                if twin is not None:
                    counts["transfer"][eps] += hits(run_pgd(twin, x, y, eps), y)
            large += hits(run_pgd(model, x, y, large_eps), y)
            total += y.shape[0]
    if total == 0:
        raise ValueError("no samples to audit")

    def share(name: str) -> dict[float, float]:
        return {eps: c / total for eps, c in counts[name].items()}

    report = AuditReport(
        num_samples=total,
        chance=1.0 / num_classes,
        clean_accuracy=clean / total,
        fgsm=share("fgsm"),
        pgd=share("pgd"),
        large_eps=large_eps,
        large_eps_accuracy=large / total,
        zero_gradient_fraction=zero / total,
        transfer=share("transfer") if twin is not None else None,
    )
    report.checks = _audit_checks(report, tolerance, chance_margin, max_zero_gradient_fraction)
    return report


def _audit_checks(
    report: AuditReport, tolerance: float, chance_margin: float, max_zero: float
) -> list[AuditCheck]:
    def table(values: Mapping[float, float]) -> str:
        return ", ".join(f"{eps:.4g}: {acc:.3f}" for eps, acc in values.items())

    worse = [eps for eps in report.pgd if report.pgd[eps] > report.fgsm[eps] + tolerance]
    checks = [
        AuditCheck(
            "pgd <= fgsm",
            not worse,
            "PGD never above FGSM"
            if not worse
            else f"PGD above FGSM at eps {', '.join(f'{e:.4g}' for e in worse)}",
        )
    ]
    monotone = {
        name: _non_increasing([report.clean_accuracy, *values.values()], tolerance)
        for name, values in (("fgsm", report.fgsm), ("pgd", report.pgd))
    }
    checks.append(
        AuditCheck(
            "accuracy non-increasing in eps",
            all(monotone.values()),
            f"clean {report.clean_accuracy:.3f}; fgsm {table(report.fgsm)}; "
            f"pgd {table(report.pgd)}",
        )
    )
    checks.append(
        AuditCheck(
            "chance at large eps",
            report.large_eps_accuracy <= report.chance + chance_margin,
            f"PGD accuracy {report.large_eps_accuracy:.3f} at eps {report.large_eps:g} "
            f"(chance {report.chance:.3f}, margin {chance_margin:g})",
        )
    )
    checks.append(
        AuditCheck(
            "no all-zero input gradients",
            report.zero_gradient_fraction <= max_zero,
            f"{report.zero_gradient_fraction:.4f} of samples (allowed {max_zero:g})",
        )
    )
    if report.transfer is not None:
        stronger = [
            eps
            for eps, acc in report.transfer.items()
            if acc < min(report.fgsm[eps], report.pgd[eps]) - tolerance
        ]
        checks.append(
            AuditCheck(
                "transfer weaker than white-box",
                not stronger,
                f"transfer {table(report.transfer)}"
                + (
                    f"; beats white-box at eps {', '.join(f'{e:.4g}' for e in stronger)}"
                    if stronger
                    else ""
                ),
            )
        )
    return checks
