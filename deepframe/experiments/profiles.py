"""What a reproduction trains: profiles and the list of models they imply.

A :class:`Profile` fixes everything that decides the numbers (data and its
sizes, architectures, training, attacks, seeds); :func:`model_specs` expands
it into the :class:`ModelSpec` of every model the figures and the claims
table need, each seed its own model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "PROFILES",
    "FAMILIES",
    "Profile",
    "ModelSpec",
    "adversarial_base",
    "build_graph",
    "feedforward_base",
    "model_specs",
    "pursuit_base",
    "select_shard",
]

#: Display names of the solver families of Figs. 6-10, as in the paper's legends.
FAMILIES = {"lbp": "L-BP", "dp": "DP", "dpres": "DP-res"}


@dataclass(frozen=True)
class Profile:
    """Everything that decides what :func:`deepframe.experiments.reproduce` trains.

    Attributes
    ----------
    name : str
        Profile name.
    dataset : {"digits", "cifar10"}
        Data set (CIFAR-10 needs a ``cifar-10-batches-py`` folder).
    train_images, eval_images : int or None
        Size of the class-stratified training subset and of the fixed,
        class-stratified evaluation subset of the held-out images on which
        every final accuracy (clean, FGSM, PGD) is measured (None: all).
    val_images : int
        First images of the evaluation subset used for the per-epoch
        training log (accuracy and FGSM, Fig. 7).
    widths : tuple of int
        Channels of the three stages of every network.
    depths : tuple of int
        ``n`` of the 6n+2 ResNets of Fig. 5 (one ResNet and its chain twin each).
    densenet_layers : tuple of int
        Layers per stage of the DenseNets trained for dataless model selection.
    iterations : tuple of int
        Our ``T`` of Fig. 6 (``0`` is the feed-forward network; the paper's
        axis counts it as one iteration, so its ``T`` is ours plus one).
    pursuit_depth : int
        ``n`` of the networks of Figs. 6-10 (the paper: a depth-1 network).
    seeds : tuple of int
        Every model is trained once per seed (initial weights, batch order,
        augmentation).
    epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule
        Training settings of :func:`deepframe.train.train`.
    batchnorm : bool
        Batch norm on every node (folded into the pursuit).
    augment : bool
        Random crop and flip of the training images (CIFAR-10).
    eps : str
        Radius of FGSM, PGD and adversarial training, in pixel units of [0, 1].
    pgd_steps : int
        PGD steps (L-inf, random start, step ``2.5 eps / steps``).
    adversarial_baseline : bool
        Also train the feed-forward ResNet with FGSM adversarial training
        (random start, Wong et al. 2020): the non-architectural baseline.
    curve_pgd_images : int
        Images for the per-epoch PGD accuracy of the Fig. 7 models (0: none).
    trace_images : int
        Evaluation images of the pursuit trace (Fig. 8).
    selection_steps, selection_lr : int, float
        Adam steps and rate of :func:`deepframe.minimize_frame_potential`.
    threads : int
        ``torch.set_num_threads`` in each worker process.
    note : str
        One line on what the profile is for, printed in the report.
    """

    name: str
    dataset: str
    train_images: int | None
    eval_images: int | None
    val_images: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    densenet_layers: tuple[int, ...]
    iterations: tuple[int, ...]
    pursuit_depth: int
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str | None
    batchnorm: bool
    augment: bool
    eps: str
    pgd_steps: int
    adversarial_baseline: bool
    curve_pgd_images: int
    trace_images: int
    selection_steps: int
    selection_lr: float
    threads: int
    note: str = field(default="", compare=False)


#: The built-in profiles (see docs/results.md for what each one ran).
#: Digits use eps 0.1: on 8x8 images with 17 grey levels, 8/255 moves no pixel
#: across a level and leaves every model near its clean accuracy.
PROFILES: dict[str, Profile] = {
    "test": Profile(
        "test",
        dataset="digits",
        train_images=200,
        eval_images=96,
        val_images=64,
        widths=(4, 8, 8),
        depths=(1, 2),
        densenet_layers=(2,),
        iterations=(0, 1),
        pursuit_depth=1,
        seeds=(0, 1),
        epochs=1,
        batch_size=128,
        optimizer="adam",
        lr=1e-2,
        momentum=0.9,
        weight_decay=0.0,
        schedule="cosine",
        batchnorm=True,
        augment=False,
        eps="0.1",
        pgd_steps=3,
        adversarial_baseline=True,
        curve_pgd_images=32,
        trace_images=32,
        selection_steps=3,
        selection_lr=1e-2,
        threads=1,
        note="smoke test of the pipeline (seconds); numbers mean nothing",
    ),
    "quick": Profile(
        "quick",
        dataset="digits",
        train_images=None,
        eval_images=None,
        val_images=360,
        widths=(8, 16, 32),
        depths=(1, 2, 3),
        densenet_layers=(2, 3),
        iterations=(0, 1, 2, 4),
        pursuit_depth=1,
        seeds=(0, 1, 2),
        epochs=6,
        batch_size=64,
        optimizer="adam",
        lr=1e-2,
        momentum=0.9,
        weight_decay=0.0,
        schedule="cosine",
        batchnorm=True,
        augment=False,
        eps="0.1",
        pgd_steps=10,
        adversarial_baseline=True,
        curve_pgd_images=180,
        trace_images=256,
        selection_steps=60,
        selection_lr=1e-2,
        threads=1,
        note="scikit-learn's 8x8 digits on a CPU in minutes: checks the pipeline and "
        "the direction of effects, not the paper's numbers",
    ),
    "cifar-small": Profile(
        "cifar-small",
        dataset="cifar10",
        train_images=20000,
        eval_images=1000,
        val_images=500,
        widths=(12, 24, 48),
        depths=(1, 2, 3),
        densenet_layers=(2, 3),
        iterations=(0, 1, 2, 4),
        pursuit_depth=1,
        seeds=(0,),
        epochs=10,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        batchnorm=True,
        augment=True,
        eps="8/255",
        pgd_steps=10,
        adversarial_baseline=True,
        curve_pgd_images=250,
        trace_images=256,
        selection_steps=40,
        selection_lr=1e-2,
        threads=1,
        note="CIFAR-10 on a 2-core CPU: 20,000 training images, ResNets at stage widths "
        "12/24/48, 10 epochs",
    ),
    "full": Profile(
        "full",
        dataset="cifar10",
        train_images=None,
        eval_images=None,
        val_images=2000,
        widths=(16, 32, 64),
        depths=(1, 2, 3, 5),
        densenet_layers=(2, 3),
        iterations=(0, 1, 2, 5, 10),
        pursuit_depth=3,
        seeds=(0, 1, 2),
        epochs=100,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        batchnorm=True,
        augment=True,
        eps="8/255",
        pgd_steps=20,
        adversarial_baseline=True,
        curve_pgd_images=1000,
        trace_images=256,
        selection_steps=200,
        selection_lr=1e-2,
        threads=4,
        note="the paper's scale (full CIFAR-10, ResNet-20-size pursuit models, T up to 10): "
        "needs a GPU; run it in shards",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """One trained model.

    Attributes
    ----------
    name : str
        Folder name under ``out_dir/models`` (``base`` plus the seed).
    base : str
        Name shared by the seeds of one configuration.
    arch : {"resnet", "chain", "densenet"}
        Architecture family (``chain`` is the ResNet without its skips).
    depth : int
        ``n`` of the 6n+2 family, or layers per stage of a DenseNet.
    method : {"feedforward", "layered", "deep"}
        Solver of :func:`deepframe.compile`.
    iterations : int
        Our ``T`` (the paper's ``T`` is one more).
    seed : int
        Seed of the weights and the training streams.
    adversarial : bool
        FGSM adversarial training with random start.
    family : str
        ``"ff"``, ``"adv"``, or a key of :data:`FAMILIES`.
    curve : bool
        A Fig. 7 model: PGD accuracy is also logged every epoch.
    """

    name: str
    base: str
    arch: str
    depth: int
    method: str
    iterations: int
    seed: int
    adversarial: bool = False
    family: str = "ff"
    curve: bool = False

    @property
    def skips(self) -> bool:
        return self.arch != "chain"


_SHORT = {"resnet": "res", "chain": "chain", "densenet": "dense"}


def _spec(base: str, seed: int, **fields) -> ModelSpec:
    return ModelSpec(name=f"{base}-seed{seed}", base=base, seed=seed, **fields)


def feedforward_base(arch: str, depth: int) -> str:
    """Base name of a feed-forward model: ``ff-res-n1``, ``ff-chain-n2``, ``ff-dense-l3``."""
    prefix = "l" if arch == "densenet" else "n"
    return f"ff-{_SHORT[arch]}-{prefix}{depth}"


def pursuit_base(family: str, depth: int, t: int) -> str:
    """Base name of ``family`` (lbp, dp, dpres) at our ``T = t``: ``dp-n1-T2``.

    ``t = 0`` is the feed-forward model of the family's graph (the ResNet for
    DP-res, the chain twin otherwise).
    """
    if t == 0:
        return feedforward_base("resnet" if family == "dpres" else "chain", depth)
    return f"{family}-n{depth}-T{t}"


def adversarial_base(depth: int) -> str:
    """Base name of the adversarially trained feed-forward ResNet: ``adv-res-n1``."""
    return f"adv-res-n{depth}"


def _feedforward(arch: str, depth: int, seed: int, curve: bool = False) -> ModelSpec:
    return _spec(
        feedforward_base(arch, depth),
        seed,
        arch=arch,
        depth=depth,
        method="feedforward",
        iterations=0,
        curve=curve,
    )


def pursuit_spec(family: str, depth: int, t: int, seed: int, curve: bool = False) -> ModelSpec:
    """The model of ``family`` (lbp, dp, dpres) at our ``T = t``; ``t = 0`` is feed-forward."""
    arch = "resnet" if family == "dpres" else "chain"
    if t == 0:
        return _feedforward(arch, depth, seed, curve)
    method = "layered" if family == "lbp" else "deep"
    return _spec(
        pursuit_base(family, depth, t),
        seed,
        arch=arch,
        depth=depth,
        method=method,
        iterations=t,
        family=family,
        curve=curve,
    )


def adversarial_spec(profile: Profile, seed: int) -> ModelSpec:
    """The FGSM-adversarially-trained feed-forward ResNet (the non-architectural baseline)."""
    n = profile.pursuit_depth
    return _spec(
        adversarial_base(n),
        seed,
        arch="resnet",
        depth=n,
        method="feedforward",
        iterations=0,
        adversarial=True,
        family="adv",
    )


def model_specs(profile: Profile, seeds: tuple[int, ...] | None = None) -> list[ModelSpec]:
    """Every distinct model of a profile, seed by seed (no duplicates).

    Per seed: the feed-forward ResNets and chain twins of Fig. 5, the
    DenseNets of the model selection, the adversarially trained baseline,
    and L-BP / DP / DP-res at every nonzero ``T`` of Fig. 6 (``T = 0`` is the
    feed-forward model of the same graph). The Fig. 7 models (feed-forward
    chain, L-BP and DP at the largest ``T``) log PGD accuracy every epoch.
    """
    t_max = max(profile.iterations)
    n = profile.pursuit_depth
    specs: list[ModelSpec] = []
    for seed in profile.seeds if seeds is None else seeds:
        for depth in profile.depths:
            curve = depth == n
            specs.append(_feedforward("resnet", depth, seed))
            specs.append(_feedforward("chain", depth, seed, curve=curve))
        specs += [_feedforward("densenet", layers, seed) for layers in profile.densenet_layers]
        if profile.adversarial_baseline:
            specs.append(adversarial_spec(profile, seed))
        for family in FAMILIES:
            for t in profile.iterations:
                specs.append(
                    pursuit_spec(family, n, t, seed, curve=family != "dpres" and t == t_max)
                )
    unique: dict[str, ModelSpec] = {}
    for s in specs:
        if s.name in unique and s.curve and not unique[s.name].curve:
            unique[s.name] = s
        unique.setdefault(s.name, s)
    return list(unique.values())


def build_graph(spec: ModelSpec, profile: Profile, input_shape):
    """The architecture of a model spec: a 6n+2 ResNet, its chain twin, or a DenseNet.

    Stage widths and batch norm come from the profile, the input shape from
    the data set.
    """
    from ..graph import densenet, resnet

    shape = tuple(input_shape)
    if spec.arch == "densenet":
        return densenet(shape, spec.depth, widths=profile.widths, batchnorm=profile.batchnorm)
    return resnet(
        shape,
        spec.depth,
        widths=profile.widths,
        skips=spec.skips,
        batchnorm=profile.batchnorm,
    )


def select_shard(specs: list[ModelSpec], shard: tuple[int, int] | None) -> list[ModelSpec]:
    """The models of shard ``i`` of ``n`` (1-based): every n-th model from the i-th.

    Models are dealt round-robin after sorting by estimated cost (most
    expensive first), so shards take similar time.
    """
    if shard is None:
        return list(specs)
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n):
        raise ValueError(f"shard must be i/n with 1 <= i <= n, got {i}/{n}")
    ordered = sorted(specs, key=lambda s: (-cost(s), s.name))
    return [s for k, s in enumerate(ordered) if k % n == i - 1]


def cost(spec: ModelSpec) -> float:
    """A rough relative training cost (for ordering and sharding only)."""
    layers = {"resnet": 2 * spec.depth * 3 + 1, "chain": 2 * spec.depth * 3 + 1}.get(
        spec.arch, 1 + 3 * spec.depth * (spec.depth + 1) // 2
    )
    per_layer = 1 + 2.2 * spec.iterations
    return layers * per_layer * (2.0 if spec.adversarial else 1.0)
