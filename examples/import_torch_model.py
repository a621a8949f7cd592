"""Bring your own network: train a small PyTorch ResNet on the digits, import it with
deepframe.from_torch, measure the geometry of the trained network, then fine-tune a
deep-pursuit version of it and compare robustness and geometry before and after.

    nice -n 15 python examples/import_torch_model.py [--out runs/byom] [--threads 2]

Everything is plain PyTorch up to the weights file (a DataParallel checkpoint, as
training scripts write it); deepframe starts at ``from_torch``. Runs in a few
minutes on 2 CPU cores; writes ``results.json`` to ``--out``.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import deepframe as df
from deepframe.attacks import accuracy, robust_accuracy
from deepframe.data import digits


# --------------------------------------------------------------------------- the user's model
class LambdaLayer(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # option A: subsample, zero channels
            pad = (c_out - c_in) // 2
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, c_out - c_in - pad))
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class DigitsResNet(nn.Module):
    """A CIFAR-style ResNet-8 (one block per stage) for 1x8x8 digits."""

    def __init__(self, widths=(8, 16, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c = [], widths[0]
        for s, width in enumerate(widths):
            blocks.append(BasicBlock(c, width, 1 if s == 0 else 2))
            c = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(widths[-1], 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def train_in_pytorch(train_set, epochs: int, path: Path) -> None:
    """The user's own training script: SGD, cosine schedule, a DataParallel checkpoint."""
    torch.manual_seed(0)
    model = nn.DataParallel(DigitsResNet())  # keys get the "module." prefix
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        schedule.step()
    torch.save({"epoch": epochs, "state_dict": model.state_dict()}, path)


# --------------------------------------------------------------------------- measurements
def geometry(D) -> dict:
    D = D.to(torch.float64)
    return {
        "mutual_coherence": df.mutual_coherence(D),
        "deep_frame_potential": df.deep_frame_potential(D),
        "frame_potential": df.frame_potential(D),
    }


def robustness(model, val_set, eps) -> dict:
    out = {"clean": accuracy(model, val_set)}
    for attack in ("fgsm", "pgd"):
        accs = robust_accuracy(model, val_set, eps, attack, steps=10, seed=0)
        out.update({f"{attack}@{e:g}": a for e, a in accs.items()})
    return out


def fine_tune(model, train_set, val_set, epochs: int) -> list:
    return df.train(
        model,
        train_set,
        val_set,
        epochs=epochs,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="cosine",
        seed=0,
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/byom")
    parser.add_argument("--epochs", type=int, default=20, help="PyTorch training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3, help="T of the deep pursuit")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_set, val_set = digits(seed=0)
    eps = [0.05, 0.1]

    # 1. the user's network, trained and saved by plain PyTorch
    checkpoint = out / "digits_resnet8.pth"
    train_in_pytorch(train_set, args.epochs, checkpoint)

    # 2. import: graph + weights, checked against the model's logits
    example = torch.stack([train_set[i][0] for i in range(2)])
    g, weights = df.from_torch(DigitsResNet(), example, state_dict=checkpoint)
    nodes = df.graph.activation_nodes(g)
    lambdas = torch.cat([weights[f"lambda:{j}"] for j in nodes])
    print(
        f"imported: {len(nodes)} activation nodes, {g.number_of_edges()} edges; "
        f"{int((lambdas < 0).sum())} of {lambdas.numel()} lambdas < 0"
    )

    # 3. geometry of the trained network (and of the same architecture at random weights)
    results = {"settings": vars(args), "eps": eps}
    results["geometry_random_init"] = geometry(df.dictionary(g, seed=0))
    results["geometry_imported"] = geometry(df.dictionary(g, weights=weights))

    # 4. robustness of the imported (feed-forward) network
    imported = df.compile(g, method="feedforward", weights=weights).eval()
    results["imported"] = robustness(imported, val_set, eps)

    # 5. deep pursuit from the imported weights (lambda projected onto [0, inf)), fine-tuned;
    #    and, as the control, the feed-forward network fine-tuned the same way
    deep = df.compile(
        g, method="deep", iterations=args.iterations, weights=weights, negative_bias="clip"
    )
    results["deep_before_fine_tuning"] = robustness(deep, val_set, eps)
    control = df.compile(g, method="feedforward", weights=weights)
    for name, model in (("deep", deep), ("feedforward_control", control)):
        history = fine_tune(model, train_set, val_set, args.fine_tune_epochs)
        results[f"{name}_fine_tuned"] = robustness(model.eval(), val_set, eps)
        results[f"{name}_fine_tuned"]["train_loss"] = [r["train_loss"] for r in history]
        results[f"geometry_{name}_fine_tuned"] = geometry(model.dictionary())
    results["seconds"] = time.perf_counter() - started

    (out / "results.json").write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        if isinstance(value, dict) and key != "settings":
            cells = ", ".join(f"{k} {v:.4g}" for k, v in value.items() if isinstance(v, float))
            print(f"{key:>34}: {cells}")
    print(f"{results['seconds']:.0f} s; {out / 'results.json'}")


if __name__ == "__main__":
    main()
