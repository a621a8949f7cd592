"""GPU-path helpers: the TF32 switch, CUDA-graph inference, the host-sync check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deepframe as df
from deepframe import accel
from deepframe.testing import assert_no_host_sync


def _settings():
    return [getattr(space, name) for space, name, _, _ in accel._precision_switches()]


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_switch_sets_and_restores_the_precision_flags(enabled):
    before = _settings()
    with accel.tf32(enabled):
        inside = _settings()
    assert _settings() == before
    expected = [on if enabled else off for _, _, on, off in accel._precision_switches()]
    assert inside == expected


def test_tf32_switch_restores_the_flags_after_an_error():
    before = _settings()
    with pytest.raises(RuntimeError, match="boom"), accel.tf32(True):
        raise RuntimeError("boom")
    assert _settings() == before


def test_cuda_graph_inference_refuses_cpu_inputs():
    net = df.compile(df.chain((1, 4, 4), [2]), method="deep", iterations=1).eval()
    with pytest.raises(ValueError, match="CUDA"):
        accel.CudaGraphInference(net, torch.rand(2, 1, 4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_inference_equals_eager():
    g = df.resnet((3, 8, 8), 1, widths=(4, 6), bias=0.05, batchnorm=True)
    net = df.compile(g, method="deep", iterations=3, alpha="fista", device="cuda").eval()
    x = torch.rand(4, 3, 8, 8, device="cuda")
    graphed = accel.CudaGraphInference(net, x)
    for seed in range(2):
        x = torch.rand(
            4, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)
        )
        with torch.no_grad():
            torch.testing.assert_close(graphed(x), net(x))
    with pytest.raises(ValueError, match="shape"):
        graphed(torch.rand(2, 3, 8, 8, device="cuda"))
    with pytest.raises(ValueError, match="eval"):
        accel.CudaGraphInference(net.train(), x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tf32_channels_last_and_jacobi_run_on_cuda():
    g = df.resnet((3, 16, 16), 2, widths=(8, 16), bias=0.05)
    x = torch.rand(8, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    ref = df.compile(g, method="deep", iterations=3, device="cuda", dtype=torch.float64).train()
    want = ref(x.double())
    for options in ({"channels_last": True}, {"schedule": "jacobi"}, {}):
        net = df.compile(g, method="deep", iterations=3, device="cuda", **options).train()
        net.load_state_dict(ref.state_dict())
        for enabled in (False, True):
            with accel.tf32(enabled):
                out = net(x)
                F.cross_entropy(out, y).backward()
            if "schedule" not in options:  # Jacobi is a different solver
                tol = 5e-2 if enabled else 1e-4
                torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
# the host-sync check itself: it must catch what it claims to
# ---------------------------------------------------------------------------
class _ItemInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return grad * float(grad.abs().max())


@pytest.mark.parametrize(
    "offence",
    [
        lambda x: x.sum().item(),
        lambda x: float(x.sum()),
        lambda x: bool(x.sum() > 0),
        lambda x: x[x > 0.5],
        lambda x: x.nonzero(),
        lambda x: _ItemInBackward.apply(x.requires_grad_()).sum().backward(),
    ],
    ids=["item", "float", "bool", "mask", "nonzero", "in-backward"],
)
def test_host_sync_check_catches_synchronising_operations(offence):
    x = torch.rand(5)
    with pytest.raises(AssertionError, match="host synchronisation"), assert_no_host_sync():
        offence(x)


def test_host_sync_check_passes_device_side_code():
    x = torch.rand(5, requires_grad=True)
    with assert_no_host_sync() as found:
        y = torch.where(x > 0.5, x, 0.0).relu().sum() * x.clamp_min(0.1).max()
        y.backward()
    assert found == []
