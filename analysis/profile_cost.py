"""Projected training time of a reproduction profile on this machine, from timed steps.

    python analysis/profile_cost.py [--profile cifar-small] [--steps 6] [--jobs 2]
                                    [--only PATTERNS] [--out cost.json]

For every model of the profile (its first seed), compiled as ``deepframe
reproduce`` compiles it: the median time of ``--steps`` training steps (after
one warm-up step) on random images of the data set's shape, at the profile's
batch size and threads per job, with ``--jobs`` models timed side by side in
separate processes, as the reproduction trains them. A step is what
``deepframe.train`` does per batch: refresh the Lipschitz bounds, the FGSM
step of adversarial training (random start, step 1.25 eps) where the model
has it, forward, backward and an SGD step.

Projection per model: steps per epoch x epochs x step time. Not counted: data
loading and augmentation, the per-epoch validation (FGSM on the validation
images, PGD for the Fig. 7 models), the final attacks and the measuring; for
the feed-forward models of ``cifar-small`` they added 30-50% (the run's
per-epoch times in ``models/<name>/log.jsonl`` against this projection). The
whole profile's wall time is projected by dealing the models, longest first,
to ``--jobs`` workers. No data needed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import multiprocessing
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout: time this tree's deepframe
    sys.path.insert(0, ROOT)

_TRAIN_SIZE = {"cifar10": 50000}  # the whole training set, where a profile takes it all


def _train_images(profile) -> int:
    if profile.train_images is not None:
        return profile.train_images
    if profile.dataset in _TRAIN_SIZE:
        return _TRAIN_SIZE[profile.dataset]
    from deepframe.data import load_dataset

    return len(load_dataset(profile.dataset, seed=0)[0])


def time_model(spec, profile, steps: int) -> dict:
    """Median seconds of one training step of ``spec`` (in this process)."""
    import torch
    import torch.nn.functional as F

    from deepframe.attacks import parse_eps, pgd
    from deepframe.data import DATASETS
    from deepframe.experiments.profiles import build_graph
    from deepframe.pursuit import compile

    torch.set_num_threads(profile.threads)
    info = DATASETS[profile.dataset]
    graph = build_graph(spec, profile, info.input_shape)
    model = compile(
        graph,
        method=spec.method,
        iterations=spec.iterations,
        **info.compile_options(),
        seed=spec.seed,
    ).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=1e-3,
        momentum=profile.momentum,
        weight_decay=profile.weight_decay,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(profile.batch_size, *info.input_shape, generator=gen)
    y = torch.randint(0, info.num_classes, (profile.batch_size,), generator=gen)
    eps = parse_eps(profile.eps)

    def step():
        model.refresh_lipschitz()
        inputs = x
        if spec.adversarial:
            inputs = pgd(
                model, x, y, eps, steps=1, step_size=1.25 * eps, random_start=True, generator=gen
            )
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), y).backward()
        optimizer.step()

    step()  # warm-up
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"name": spec.name, "step_seconds": statistics.median(seconds)}


def _worker(args):
    spec, profile, steps = args
    return time_model(spec, profile, steps)


def _schedule(seconds: list[float], jobs: int) -> float:
    """Wall time of the jobs dealt, longest first, to whichever worker is free first."""
    free = [0.0] * jobs
    for s in sorted(seconds, reverse=True):
        free[free.index(min(free))] += s
    return max(free)


def main(argv=None) -> int:
    from deepframe.experiments.profiles import PROFILES, model_specs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cifar-small", choices=sorted(PROFILES))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--jobs", type=int, default=2, help="models timed side by side")
    parser.add_argument("--only", help="comma-separated shell patterns of model names")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    args = parser.parse_args(argv)

    profile = PROFILES[args.profile]
    seed = profile.seeds[0]
    specs = model_specs(profile, (seed,))
    if args.only:
        patterns = [p.strip() for p in args.only.split(",")]
        specs = [s for s in specs if any(fnmatch.fnmatch(s.name, p) for p in patterns)]
    images = _train_images(profile)
    steps_per_epoch = math.ceil(images / profile.batch_size)
    print(
        f"# profile {profile.name}: {len(specs)} models (seed {seed}), {images} training "
        f"images, batch {profile.batch_size}, {steps_per_epoch} steps per epoch, "
        f"{profile.epochs} epochs; {args.jobs} jobs x {profile.threads} thread(s); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs) as pool:
        timed = pool.map(_worker, [(s, profile, args.steps) for s in specs], chunksize=1)
    rows = []
    print(f"{'model':<22} {'step s':>8} {'epoch min':>10} {'training min':>13}")
    for spec, t in zip(specs, timed, strict=True):
        epoch = t["step_seconds"] * steps_per_epoch
        row = {
            "name": spec.name,
            "method": spec.method,
            "iterations": spec.iterations,
            "adversarial": spec.adversarial,
            "step_seconds": t["step_seconds"],
            "epoch_seconds": epoch,
            "training_seconds": epoch * profile.epochs,
        }
        rows.append(row)
        print(
            f"{spec.name:<22} {row['step_seconds']:8.3f} {epoch / 60:10.2f} "
            f"{row['training_seconds'] / 60:13.1f}"
        )
    total = math.fsum(r["training_seconds"] for r in rows)
    wall = _schedule([r["training_seconds"] for r in rows], args.jobs)
    print(
        f"\nsummed training steps: {total / 60:.0f} core-minutes x threads; projected wall "
        f"time with {args.jobs} jobs (longest first): {wall / 3600:.2f} h, before validation, "
        "attacks and measuring"
    )
    if args.out:
        with open(args.out, "w") as f:
            meta = {
                "profile": profile.name,
                "steps": args.steps,
                "jobs": args.jobs,
                "threads": profile.threads,
                "load_average_end": os.getloadavg(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            json.dump(
                {"meta": meta, "rows": rows, "training_core_seconds": total, "wall_seconds": wall},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
