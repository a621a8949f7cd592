"""Importing PyTorch models (deepframe.interop, SPEC §10).

Every reference here is the PyTorch model itself (eval mode, float64) or a
matrix assembled by hand from its weights; the models are plain PyTorch,
written the way CIFAR code writes them.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepframe as df
from deepframe.interop import load_state_dict
from deepframe.terms import edge_key
from deepframe.train import model_metadata


# --------------------------------------------------------------------------
# plain PyTorch models
# --------------------------------------------------------------------------
class LambdaLayer(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


class BasicBlock(nn.Module):
    """The CIFAR ResNet block: BN before the addition, option A or B shortcut."""

    def __init__(self, c_in, c_out, stride=1, option="A"):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            if option == "A":
                pad = (c_out - c_in) // 4 * 2 // 2
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(
                        x[:, :, ::2, ::2], (0, 0, 0, 0, pad, c_out - c_in - pad), "constant", 0
                    )
                )
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al. 2016, Sec. 4.2)."""

    def __init__(self, n=3, option="A", widths=(16, 32, 64), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c = [], widths[0]
        for s, width in enumerate(widths):
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(c, width, stride, option))
                c = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


class DenseNet(nn.Module):
    """A small DenseNet-style model: every layer convolves the concatenation of all
    earlier maps of its block (torch.cat), a 1x1 transition, a second block."""

    def __init__(self, growth=4, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        c = 8
        for _ in range(layers):
            self.convs.append(nn.Conv2d(c, growth, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(growth))
            c += growth
        self.transition = nn.Conv2d(c, 12, 1, stride=2, bias=False)
        self.bn_t = nn.BatchNorm2d(12)
        self.conv_b = nn.Conv2d(12, 6, 3, padding=1)
        self.conv_c = nn.Conv2d(18, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        features = [F.relu(self.bn(self.stem(x)))]
        for conv, bn in zip(self.convs, self.bns):
            features.append(F.relu(bn(conv(torch.cat(features, 1)))))
        t = F.relu(self.bn_t(self.transition(torch.cat(features, 1))))
        b = torch.relu(self.conv_b(t))
        c = torch.relu(self.conv_c(torch.cat([t, b], dim=1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


def randomise(model, seed=0, spread=1.0):
    """Random batch-norm statistics and affine parameters (both signs of beta)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2 * spread)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2 * spread)
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1 * spread)
    return model


def reference_logits(model, x):
    import copy

    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return m(x.double())


def imported_logits(model, example, x, **kwargs):
    g, weights = df.from_torch(model, example, **kwargs)
    net = df.compile(g, method="feedforward", weights=weights, dtype=torch.float64).eval()
    with torch.no_grad():
        return net(x.double()), g, weights


def images(shape, batch=3, seed=1):
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------
# exactness: ResNet-20 (option A and B) and a DenseNet-style model
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, size",
    [("A", 16), ("B", 16), pytest.param("A", 32, marks=pytest.mark.slow)],
)
def test_resnet20_logits_exact(option, size):
    """ResNet-20 (3 stages of 3 blocks); the 16x16 input keeps every layer of the
    32x32 network (the maps are 16, 8, 4 instead of 32, 16, 8)."""
    torch.manual_seed(0)
    model = randomise(ResNet(3, option), seed=1)
    x = images((3, size, size))
    got, g, weights = imported_logits(model, x[:2], x)
    assert torch.allclose(got, reference_logits(model, x), rtol=0, atol=1e-10)
    # 19 ReLUs, 1 + 9 * 2 convs; skips: identity, and option A shortcut / B projection
    assert len(df.graph.activation_nodes(g)) == 19
    ops = sorted(a["op"] for _, _, a in g.edges(data=True))
    assert ops.count("identity") == 7
    assert ops.count("shortcut" if option == "A" else "conv") == (2 if option == "A" else 21)
    # trained-network biases of both signs survive, exactly
    lams = torch.cat([weights[f"lambda:{j}"] for j in df.graph.activation_nodes(g)])
    assert (lams < 0).any() and (lams > 0).any()


def test_resnet20_option_a_matches_the_builder_graph():
    """Same nodes, edges and ops as deepframe's own resnet builder (up to names)."""
    g, _ = df.from_torch(ResNet(3, "A").eval(), images((3, 16, 16), 2))
    ref = df.resnet((3, 16, 16), 3)

    def signature(graph):
        return sorted(
            (graph.nodes[k]["shape"], graph.nodes[j]["shape"], a["op"], a.get("stride", 1))
            for k, j, a in graph.edges(data=True)
        )

    assert signature(g) == signature(ref)


def test_densenet_with_concatenation_exact():
    torch.manual_seed(0)
    model = randomise(DenseNet(), seed=2)
    x = images((3, 8, 8))
    got, g, _ = imported_logits(model, x[:2], x)
    assert torch.allclose(got, reference_logits(model, x), rtol=0, atol=1e-10)
    # dense layers read 1, 2, 3 earlier maps, the transition 4, conv_c 2 (one edge per part)
    degrees = sorted(g.in_degree(j) for j in df.graph.activation_nodes(g))
    assert degrees == [1, 1, 1, 2, 2, 3, 4]


# --------------------------------------------------------------------------
# the spellings people write
# --------------------------------------------------------------------------
class ConvBiasNet(nn.Module):
    """Conv with bias and no batch norm, nn.ReLU(inplace=True), AdaptiveAvgPool2d + flatten."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, stride=(2, 2), padding=(1, 1)),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class FunctionalNet(nn.Module):
    """F.conv2d / F.linear with the module's own parameters, torch.relu, x.mean((2, 3))."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = nn.Parameter(torch.randn(5, 3, 3, 3, generator=g) * 0.3)
        self.b1 = nn.Parameter(torch.randn(5, generator=g) * 0.1)
        self.w2 = nn.Parameter(torch.randn(7, 5, 1, 1, generator=g) * 0.3)
        self.wf = nn.Parameter(torch.randn(4, 7, generator=g) * 0.3)
        self.bf = nn.Parameter(torch.randn(4, generator=g) * 0.1)

    def forward(self, x):
        h = torch.relu(F.conv2d(x, self.w1, self.b1, 1, 1))
        h = torch.relu(F.conv2d(h, self.w2, None, stride=2, padding=0))
        return F.linear(h.mean((2, 3)), self.wf, self.bf)


class InPlaceResidualNet(nn.Module):
    """x.relu(), add_ and relu_ without rebinding, torch.add, F.adaptive_avg_pool2d + view."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.bn0(self.stem(x)).relu()
        out = self.bn1(self.conv1(h))
        out.add_(h)
        out.relu_()
        out2 = torch.relu(torch.add(self.bn2(self.conv2(out)), out))
        pooled = F.adaptive_avg_pool2d(out2, 1)
        return self.fc(pooled.view(pooled.size(0), -1))


class PostAddBatchNormNet(nn.Module):
    """Batch norm after the addition of a residual block, nn.AvgPool2d over the map + squeeze."""

    def __init__(self, eps=1e-5):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, eps=eps)
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        out = F.relu(self.bn(self.conv2(F.relu(self.conv1(h))) + h))
        return self.fc(self.pool(out).squeeze(-1).squeeze(-1))


class UnevenShortcutNet(nn.Module):
    """Option-A shortcuts with all zero channels behind, or all in front."""

    def __init__(self, front):
        super().__init__()
        self.front = front
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(4, 10, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(10, 10, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        pad = (0, 0, 0, 0, 6, 0) if self.front else (0, 0, 0, 0, 0, 6)
        out = self.bn(self.conv2(F.relu(self.conv1(h))))
        out = F.relu(out + F.pad(h[:, :, ::2, ::2], pad))
        return self.fc(out.mean(dim=[-1, -2]))


class ParallelMapsNet(nn.Module):
    """One-conv residual blocks: a conv and a skip from the same node into one sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.fc1 = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.bn(self.conv(h)) + h)  # conv + identity from h
        h = F.relu(self.down(h) + F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)))  # + shortcut
        v = F.adaptive_avg_pool2d(h, 1).flatten(1)
        v = F.relu(self.fc1(v))
        return self.fc(F.relu(self.fc1(v) + v))  # dense + identity from v


class MLP(nn.Module):
    """nn.Flatten, Linear, BatchNorm1d, dropout and nn.Identity; a dense output node."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(48, 20),
            nn.BatchNorm1d(20),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(20, 12),
            nn.Identity(),
            nn.ReLU(),
            nn.Linear(12, 4),
        )

    def forward(self, x):
        return self.net(x)


class PreActivationConcatNet(nn.Module):
    """DenseNet-BC style BN-ReLU-conv on a concatenation; sum() of branches; padding='same'."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding="same", bias=False)
        self.b = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(7)
        self.c = nn.Conv2d(7, 5, 3, padding=1)
        self.d = nn.Conv2d(7, 5, 3, padding=1, bias=False)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        cat = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        h = F.relu(self.bn(cat))
        out = F.relu(sum([self.c(h), self.d(h)]))
        return self.fc(out.mean((2, 3)))


class CatLinearNet(nn.Module):
    """torch.cat feeding Linear layers: pooled maps of two nodes, then two dense nodes;
    reshape(x.shape[0], -1) before the head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(9, 6)
        self.fc2 = nn.Linear(6, 5)
        self.fc3 = nn.Linear(11, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        a = F.relu(self.a(x))
        b = F.relu(self.b(a))
        v = torch.cat([F.adaptive_avg_pool2d(a, 1).flatten(1), b.mean((2, 3))], 1)
        h1 = F.relu(self.fc1(v))
        h2 = F.relu(self.fc2(h1))
        h3 = F.relu(self.fc3(torch.cat([h1, h2], dim=-1)))
        return self.head(h3.reshape(h3.shape[0], -1))


SPELLINGS = {
    "conv bias, inplace nn.ReLU, AdaptiveAvgPool2d": (ConvBiasNet, (3, 8, 8)),
    "F.conv2d, F.linear, torch.relu, mean": (FunctionalNet, (3, 7, 7)),
    "add_, relu_, torch.add, view": (InPlaceResidualNet, (3, 6, 6)),
    "BN after the addition, AvgPool2d, squeeze": (PostAddBatchNormNet, (3, 8, 8)),
    "option A, zero channels behind": (lambda: UnevenShortcutNet(False), (3, 8, 8)),
    "option A, zero channels in front": (lambda: UnevenShortcutNet(True), (3, 8, 8)),
    "MLP with BatchNorm1d": (MLP, (3, 4, 4)),
    "parallel maps between two nodes": (ParallelMapsNet, (3, 6, 6)),
    "torch.cat feeding Linear layers, reshape": (CatLinearNet, (3, 6, 6)),
    "pre-activation concatenation, sum, same": (PreActivationConcatNet, (3, 6, 6)),
}


@pytest.mark.parametrize("batchnorm", ["fold", "node"])
@pytest.mark.parametrize("name", list(SPELLINGS))
def test_spellings_logits_exact(name, batchnorm):
    factory, shape = SPELLINGS[name]
    torch.manual_seed(0)
    model = randomise(factory(), seed=4)
    x = images(shape, batch=4)
    got, g, weights = imported_logits(model, x[:2], x, batchnorm=batchnorm)
    assert torch.allclose(got, reference_logits(model, x), rtol=0, atol=1e-10)
    bn_nodes = [j for j in g if g.nodes[j].get("batchnorm")]
    assert len(bn_nodes) == sum(k.startswith("bn_scale:") for k in weights)
    if batchnorm == "fold":
        assert not bn_nodes


def test_batchnorm_after_addition_modes():
    """fold: the identity skip scaled by the batch norm becomes a diagonal 1x1 conv;
    node: the identity stays and the node keeps its batch norm (any eps)."""
    model = randomise(PostAddBatchNormNet(eps=1e-3), seed=5)
    x = images((3, 8, 8), batch=4)
    ref = reference_logits(model, x)
    got, g, w = imported_logits(model, x, x, batchnorm="fold")
    assert torch.allclose(got, ref, rtol=0, atol=1e-10)
    (skip,) = [(k, j) for k, j in g.edges if g.edges[k, j]["kernel_size"] == 1]
    diag = w[edge_key(*skip)][:, :, 0, 0]
    bn = model.bn
    s = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).detach()
    assert torch.allclose(diag, torch.diag(s), atol=1e-15)

    got, g, w = imported_logits(model, x, x, batchnorm="node")
    assert torch.allclose(got, ref, rtol=0, atol=1e-10)
    (j,) = [j for j in g if g.nodes[j].get("batchnorm")]
    assert {a["op"] for *_, a in g.in_edges(j, data=True)} == {"conv", "identity"}
    assert torch.equal(w[f"lambda:{j}"], -bn.bias.detach().double())
    assert float(w[f"bn_eps:{j}"]) == 1e-3


@pytest.mark.parametrize(
    "make",
    [lambda: PostAddBatchNormNet(eps=1e-3), lambda: ResNet(1, "B", widths=(4, 8, 8))],
    ids=["BN after the addition", "ResNet-8 B"],
)
def test_batchnorm_modes_give_one_dictionary(make):
    """Folded weights (fold) and node batch norms (node) describe one network:
    df.dictionary folds the node statistics, so both give the same D and lambdas."""
    model = randomise(make(), seed=12)
    x = images((3, 8, 8), 2)
    g_fold, w_fold = df.from_torch(model, x, batchnorm="fold")
    g_node, w_node = df.from_torch(model, x, batchnorm="node")
    folded = df.dictionary(g_fold, weights=w_fold)
    node = df.dictionary(g_node, weights=w_node)
    assert node.column_scales and not folded.column_scales
    assert node.nodes == folded.nodes
    torch.testing.assert_close(node.todense(), folded.todense(), rtol=0, atol=1e-13)
    for j in node.nodes:
        torch.testing.assert_close(node.lambdas[j], folded.lambdas[j], rtol=0, atol=1e-13)


def test_uneven_padding_is_a_shortcut_edge():
    for front, pad_before in ((False, 0), (True, 6)):
        g, _ = df.from_torch(UnevenShortcutNet(front).eval(), images((3, 8, 8), 2))
        (a,) = [a for *_, a in g.edges(data=True) if a["op"] == "shortcut"]
        assert a["stride"] == 2 and a["pad_before"] == pad_before


def test_the_model_is_not_changed():
    model = ResNet(1, "A", widths=(4, 8, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    df.from_torch(model, images((3, 8, 8), 2))
    assert model.training
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in after
    )


# --------------------------------------------------------------------------
# the dictionary of a two-layer model, assembled by hand
# --------------------------------------------------------------------------
def conv_matrix_by_probing(conv: nn.Conv2d, in_shape):
    """The matrix of conv (without bias): column i is conv(e_i)."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        cols = F.conv2d(eye, conv.weight.double(), None, conv.stride, conv.padding)
    return cols.reshape(n, -1).T.numpy()


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_two_layer_dictionary_equals_hand_assembled():
    """D = [[A1^T, 0], [-I, (S A2)^T]] (Eq. 12) with S = diag(gamma / sqrt(var + eps)),
    lambda_1 = -bias_1, lambda_2 = s * mean - beta."""
    torch.manual_seed(0)
    model = randomise(TwoLayer(), seed=6).eval()
    g, weights = df.from_torch(model, images((2, 5, 5), 2))
    D = df.dictionary(g, weights=weights)
    a1 = conv_matrix_by_probing(model.conv1, (2, 5, 5))  # (3*25, 2*25)
    a2 = conv_matrix_by_probing(model.conv2, (3, 5, 5))  # (4*9, 3*25)
    bn = model.bn2
    s = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).detach().numpy()
    a2 = np.repeat(s, 9)[:, None] * a2
    hand = np.block(
        [
            [a1.T, np.zeros((50, 36))],
            [-np.eye(75), a2.T],
        ]
    )
    assert D.todense().shape == hand.shape
    np.testing.assert_allclose(D.todense().numpy(), hand, rtol=0, atol=1e-14)
    n1, n2 = df.graph.activation_nodes(g)
    np.testing.assert_allclose(D.lambdas[n1].numpy(), -model.conv1.bias.detach().double().numpy())
    expected = s * bn.running_mean.double().numpy() - bn.bias.detach().double().numpy()
    np.testing.assert_allclose(D.lambdas[n2].numpy(), expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(weights["head.weight"], model.fc.weight.detach().double())


# --------------------------------------------------------------------------
# what is refused, and how
# --------------------------------------------------------------------------
def _net(forward, **modules):
    """A one-off model: conv stem + ReLU, then ``forward(self, h)``."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            for name, m in modules.items():
                setattr(self, name, m)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return forward(self, F.relu(self.stem(x)))

    return Net()


def _head(self, h):
    return self.fc(h.mean((2, 3)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, y):
        return self.fc((x + y).mean((2, 3)))


UNSUPPORTED = {
    "max pooling module": (
        _net(
            lambda s, h: _head(s, F.relu(s.conv(s.pool(h)))),
            pool=nn.MaxPool2d(2),
            conv=nn.Conv2d(4, 4, 1),
        ),
        ["module 'pool' (MaxPool2d)", "max pooling"],
    ),
    "max pooling function": (
        _net(lambda s, h: _head(s, F.max_pool2d(h, 2))),
        ["torch.nn.functional.max_pool2d", "max pooling"],
    ),
    "sigmoid": (
        _net(lambda s, h: _head(s, s.act(s.conv(h))), act=nn.Sigmoid(), conv=nn.Conv2d(4, 4, 1)),
        ["module 'act' (Sigmoid)", "ReLU"],
    ),
    "tanh": (
        _net(lambda s, h: _head(s, torch.tanh(s.conv(h))), conv=nn.Conv2d(4, 4, 1)),
        ["tanh", "ReLU"],
    ),
    "gelu": (
        _net(lambda s, h: _head(s, F.gelu(s.conv(h))), conv=nn.Conv2d(4, 4, 1)),
        ["gelu", "ReLU"],
    ),
    "padding='same' that pads unequally": (
        _net(
            lambda s, h: _head(s, F.relu(s.conv(h))), conv=nn.Conv2d(4, 4, (2, 3), padding="same")
        ),
        ["module 'conv' (Conv2d)", "padding='same'"],
    ),
    "linear path without ReLU": (
        _net(
            lambda s, h: _head(s, F.relu(s.conv2(s.conv1(h)))),
            conv1=nn.Conv2d(4, 4, 3, padding=1),
            conv2=nn.Conv2d(4, 4, 1),
        ),
        ["module 'conv2' (Conv2d)", "no ReLU"],
    ),
    "two inputs": (TwoInputs(), ["forward takes the inputs ['x', 'y']", "one input"]),
    "average pooling that is not global": (
        _net(lambda s, h: _head(s, F.avg_pool2d(h, 2))),
        ["torch.nn.functional.avg_pool2d", "global average pooling"],
    ),
    "multiplication": (_net(lambda s, h: _head(s, h * 2)), ["operator.mul"]),
    "subtraction": (
        _net(lambda s, h: _head(s, F.relu(s.conv(h) - h)), conv=nn.Conv2d(4, 4, 1)),
        ["operator.sub"],
    ),
    "channel slicing": (
        _net(lambda s, h: _head(s, torch.cat([h[:, 2:], h[:, :2]], 1))),
        ["operator.getitem", "x[:, :, ::s, ::s]"],
    ),
    "batch norm without running statistics": (
        _net(
            lambda s, h: _head(s, F.relu(s.bn(s.conv(h)))),
            conv=nn.Conv2d(4, 4, 1),
            bn=nn.BatchNorm2d(4, track_running_stats=False),
        ),
        ["module 'bn' (BatchNorm2d)", "running statistics"],
    ),
    "reflect padding": (
        _net(
            lambda s, h: _head(s, F.relu(s.conv(h))),
            conv=nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        ),
        ["module 'conv' (Conv2d)", "padding_mode='reflect'"],
    ),
    "softmax at the end": (_net(lambda s, h: F.softmax(_head(s, h), dim=1)), ["softmax", "ReLU"]),
    "concatenation along height": (
        _net(lambda s, h: _head(s, F.relu(s.conv(torch.cat([h, h], 2)))), conv=nn.Conv2d(4, 4, 1)),
        ["torch.cat", "axis 2"],
    ),
    "no pooling before the head": (
        _net(lambda s, h: s.fc2(h.flatten(1)), fc2=nn.Linear(4 * 36, 2)),
        ["module 'fc2' (Linear)", "classifier head"],
    ),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_ops_are_clear_errors(name):
    model, expected = UNSUPPORTED[name]
    x = images((3, 6, 6), 2)
    with pytest.raises(df.ArchitectureError) as info:
        df.from_torch(model, x)
    message = str(info.value)
    assert message.startswith("from_torch: ")
    for text in expected:
        assert text in message, (text, message)


# --------------------------------------------------------------------------
# weights files as training scripts write them
# --------------------------------------------------------------------------
def small_resnet(num_classes=10):
    return ResNet(1, "B", widths=(4, 8, 8), num_classes=num_classes)


def test_weights_files_as_they_come(tmp_path):
    torch.manual_seed(0)
    trained = randomise(small_resnet(), seed=7)
    sd = trained.state_dict()
    x = images((3, 8, 8), batch=3)
    ref = reference_logits(trained, x)
    layouts = {
        "plain": sd,
        "state_dict wrapper, DataParallel prefix": {
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "epoch": 90,
            "best_acc1": 91.25,
        },
        "model wrapper": {"model": sd, "optimizer": {"state": {}, "param_groups": []}},
        "model wrapper, DataParallel prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }
    for i, (name, obj) in enumerate(layouts.items()):
        path = tmp_path / f"{i}.pth"
        torch.save(obj, path)
        loaded = load_state_dict(path)
        assert loaded.keys() == sd.keys(), name
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name
        untrained = small_resnet()
        g, weights = df.from_torch(untrained, x[:2], state_dict=path)
        net = df.compile(g, method="feedforward", weights=weights, dtype=torch.float64).eval()
        with torch.no_grad():
            assert torch.allclose(net(x.double()), ref, rtol=0, atol=1e-10), name


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    whole = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module: refused by weights_only=True
    with pytest.raises(ValueError, match="a whole pickled torch module .*, not a state dict"):
        load_state_dict(whole)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "lr": 0.1}, other)
    with pytest.raises(ValueError, match="state_dict"):
        load_state_dict(other)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="missing .*unexpected"):
        df.from_torch(small_resnet(), images((3, 8, 8), 2), state_dict=wrong)


# --------------------------------------------------------------------------
# positive biases (lambda < 0): feed-forward and geometry, pursuit only on request
# --------------------------------------------------------------------------
def test_negative_lambda_policy():
    torch.manual_seed(0)
    model = randomise(small_resnet(), seed=8, spread=3.0)
    x = images((3, 8, 8), batch=3)
    g, weights = df.from_torch(model, x[:2])
    lambdas = {j: weights[f"lambda:{j}"] for j in df.graph.activation_nodes(g)}
    assert any((lam < 0).any() for lam in lambdas.values())

    # the feed-forward network and the geometry are well defined
    D = df.dictionary(g, weights=weights)
    assert all(torch.equal(D.lambdas[j], lam) for j, lam in lambdas.items())
    assert 0 < df.mutual_coherence(D) <= 1
    ref = reference_logits(model, x)
    for method, t in (("feedforward", 0), ("deep", 0), ("layered", 0)):
        net = df.compile(g, method=method, iterations=t, weights=weights, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(net.eval()(x.double()), ref, rtol=0, atol=1e-10)

    # a pursuit refuses them, naming the nodes and the way out
    for method in ("layered", "deep"):
        with pytest.raises(ValueError, match="negative_bias='clip'") as info:
            df.compile(g, method=method, iterations=2, weights=weights)
        assert "lambda < 0" in str(info.value)

    # ... unless asked to project lambda onto [0, inf)
    net = df.compile(
        g, method="deep", iterations=2, weights=weights, negative_bias="clip", dtype=torch.float64
    )
    for j, lam in net.lambdas().items():
        expected = lambdas[j].clamp_min(1e-4)  # softplus keeps lambda >= 1e-4
        torch.testing.assert_close(lam.detach(), expected, rtol=1e-12, atol=1e-15)
    for key, w in net.weight_dict().items():
        assert torch.equal(w.detach(), weights[key])
    assert torch.equal(net.head.weight.detach(), weights["head.weight"])
    with pytest.raises(ValueError, match="negative_bias"):
        df.compile(g, weights=weights, negative_bias="shift")


def test_compile_weights_are_checked():
    g, weights = df.from_torch(small_resnet(num_classes=3).eval(), images((3, 8, 8), 2))
    assert df.compile(g, weights=weights).head.out_features == 3
    with pytest.raises(ValueError, match="num_classes=10 .* 3 rows"):
        df.compile(g, weights=weights, num_classes=10)
    key = next(k for k in weights if "->" in k)
    broken = {k: v for k, v in weights.items() if k != key}
    with pytest.raises(ValueError, match="missing edge weights"):
        df.compile(g, weights=broken)
    with pytest.raises(ValueError, match="has shape"):
        df.compile(g, weights={**weights, key: weights[key][:1]})
    with pytest.raises(ValueError, match="unknown key 'lamda:"):
        df.compile(g, weights={**weights, "lamda:x": torch.zeros(1)})
    with pytest.raises(ValueError, match="no batchnorm=True"):
        j = df.graph.output_node(g)
        df.dictionary(g, weights={**weights, f"bn_mean:{j}": torch.zeros(8)})


def test_batchnorm_node_mode_trains_with_batch_statistics():
    """batchnorm='node': the solver's own batch norm, with the imported running statistics."""
    torch.manual_seed(0)
    model = randomise(small_resnet(), seed=9)
    x = images((3, 8, 8), batch=4)
    g, weights = df.from_torch(model, x[:2], batchnorm="node")
    net = df.compile(g, method="feedforward", weights=weights, dtype=torch.float64)
    bn_nodes = [j for j in g if g.nodes[j].get("batchnorm")]
    assert len(bn_nodes) == 4  # stem + one per block; those before an addition are folded
    for j in bn_nodes:
        name = net._names[j]
        assert torch.equal(getattr(net, f"bn_mean_{name}"), weights[f"bn_mean:{j}"])
    with torch.no_grad():
        assert torch.allclose(net.eval()(x.double()), reference_logits(model, x), atol=1e-10)
        net.train()(x.double())  # training mode: batch statistics, running ones move
    assert not torch.equal(
        getattr(net, f"bn_mean_{net._names[bn_nodes[0]]}"), weights[f"bn_mean:{bn_nodes[0]}"]
    )


# --------------------------------------------------------------------------
# fine-tuning a deep-pursuit solver initialised from imported weights
# --------------------------------------------------------------------------
def test_fine_tune_deep_pursuit_from_imported_weights(tmp_path):
    torch.manual_seed(0)
    model = randomise(small_resnet(num_classes=3), seed=10)
    g, weights = df.from_torch(model, images((3, 8, 8), 2))
    net = df.compile(g, method="deep", iterations=2, weights=weights, negative_bias="clip")
    for key, w in net.weight_dict().items():  # starts from the imported network
        assert torch.equal(w.detach(), weights[key].float())
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.rand((32, 3, 8, 8), generator=gen), torch.randint(0, 3, (32,), generator=gen)
    )
    options = {"method": "deep", "iterations": 2, "negative_bias": "clip", "num_classes": 3}
    history = df.train(
        net,
        data,
        None,
        epochs=3,
        batch_size=16,
        optimizer="adam",
        lr=1e-2,
        weight_decay=0.0,
        schedule=None,
        progress=False,
        checkpoint_dir=tmp_path,
        metadata=model_metadata(g, **options),
    )
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < losses[0], losses
    assert all(math.isfinite(v) for v in losses)
    moved = [
        k for k, w in net.weight_dict().items() if not torch.equal(w.detach(), weights[k].float())
    ]
    assert moved  # the imported weights were fine-tuned
    assert min(float(lam.detach().min()) for lam in net.lambdas().values()) >= 0
    # the checkpoint rebuilds like any other deepframe model
    again = df.load_model(tmp_path / "checkpoint.pt")
    x = data.tensors[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
USER_MODELS = """
import torch.nn as nn
import torch.nn.functional as F


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small():
    return Small()
"""


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """A user's model file and a DataParallel checkpoint of its trained weights."""
    from deepframe.interop import load_torch_model

    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    model = randomise(load_torch_model(f"{tmp_path / 'usermodels.py'}:small"), seed=11)
    path = tmp_path / "trained.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "usermodels", raising=False)
    return model, path


def test_cli_metrics_from_torch(user_model, capsys):
    from deepframe.cli import main

    model, path = user_model
    argv = ["metrics", "--from-torch", "usermodels.py:small", "--weights", str(path)]
    assert main([*argv, "--input-shape", "3,8,8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    g, weights = df.from_torch(model, images((3, 8, 8), 2))
    D = df.dictionary(g, weights=weights)
    assert report["atoms"] == D.shape[1]
    assert report["coherence"] == pytest.approx(float(df.mutual_coherence(D)), rel=1e-12)
    assert report["deep_frame_potential"] == pytest.approx(
        float(df.deep_frame_potential(D)), rel=1e-12
    )
    # the dotted module spelling, from the current folder
    assert (
        main(
            [
                "metrics",
                "--from-torch",
                "usermodels:small",
                "--weights",
                str(path),
                "--input-shape",
                "3x8x8",
            ]
        )
        == 0
    )
    assert "coherence" in capsys.readouterr().out


def test_cli_describe_from_torch(user_model, capsys):
    from deepframe.cli import main

    _, path = user_model
    argv = ["describe", "--from-torch", "usermodels:small", "--weights", str(path)]
    assert main([*argv, "--input-shape", "3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "input   x: shape (3, 8, 8)" in out
    assert "global dictionary D" in out and "conv" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["metrics"], "give an architecture"),
        (["metrics", "--from-torch", "usermodels:small"], "--input-shape"),
        (["metrics", "resnet", "--from-torch", "usermodels:small"], "not both"),
        (["describe", "--weights", "trained.pth"], "--weights needs --from-torch"),
        (["metrics", "--from-torch", "usermodels", "--input-shape", "3,8,8"], "module:factory"),
        (["metrics", "--from-torch", "nosuchmodule:f", "--input-shape", "3,8,8"], "nosuchmodule"),
        (["metrics", "--from-torch", "usermodels:big", "--input-shape", "3,8,8"], "'big'"),
        (["metrics", "--from-torch", "usermodels:small", "--input-shape", "3,8"], "--input-shape"),
        (
            ["metrics", "--from-torch", "usermodels:small", "--checkpoint", "c.pt"],
            "two models",
        ),
        (
            [
                "metrics",
                "--from-torch",
                "usermodels:small",
                "--weights",
                "nope.pt",
                "--input-shape",
                "3,8,8",
            ],
            "nope.pt",
        ),
    ],
)
def test_cli_from_torch_errors(user_model, capsys, argv, message):
    from deepframe.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err
