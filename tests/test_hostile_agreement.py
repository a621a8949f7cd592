"""The library and the command line agree, and GlobalDictionary behaves like scipy's
LinearOperator where a user expects it to (issue 21, item 11: the library's part).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import deepframe as df
from deepframe.graph import from_spec


def test_chain_defaults_its_widths_as_the_command_line_does():
    import networkx as nx

    assert nx.utils.graphs_equal(df.chain((1, 8, 8)), from_spec("chain:input_shape=1x8x8"))
    assert df.chain((1, 8, 8)).nodes["l2"]["shape"] == (16, 8, 8)


@pytest.mark.parametrize("seed", [-1, 1.0, True, "0"])
def test_dictionary_refuses_the_seeds_the_command_line_refuses(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        df.dictionary(df.chain((1, 6, 6), (2,)), seed=seed)


@pytest.fixture(scope="module")
def D32():
    return df.dictionary(df.chain((2, 5, 5), (3, 4)), seed=1, dtype=torch.float32)


def test_numpy_in_numpy_out_in_the_dictionary_dtype(D32):
    rng = np.random.default_rng(0)
    w = rng.random(D32.shape[1])  # float64
    r = rng.random((3, D32.shape[0]))
    out = D32 @ w
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (D32.shape[0],)
    np.testing.assert_array_equal(out, (D32 @ torch.from_numpy(w).float()).numpy())
    back = D32.T @ r
    assert isinstance(back, np.ndarray) and back.shape == (3, D32.shape[1])
    np.testing.assert_array_equal(back, (D32.T @ torch.from_numpy(r).float()).numpy())
    # the same numbers as scipy's LinearOperator of D (float64 on the CPU)
    op = D32.as_linear_operator()
    np.testing.assert_allclose(out, op @ w.astype(np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_tensors_of_another_dtype_are_cast_to_the_dictionary(D32, dtype):
    w = torch.arange(D32.shape[1]).remainder(3).to(dtype)
    out = D32 @ w
    assert out.dtype == torch.float32
    assert torch.equal(out, D32 @ w.to(torch.float32))


def test_what_no_operator_can_take_is_refused_in_one_line(D32):
    with pytest.raises(TypeError, match=r"^GlobalDictionary: w must be a torch.Tensor or a numpy"):
        D32 @ [0.0] * D32.shape[1]
    with pytest.raises(TypeError, match=r"^GlobalDictionary: r must be real"):
        D32.T @ torch.zeros(D32.shape[0], dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"expected codes of shape \(N,\) or \(B, N\)"):
        D32 @ np.zeros(D32.shape[1] + 1)


def test_the_linear_operator_solves_as_scipy_expects():
    D = df.dictionary(df.chain((1, 4, 4), (2,)), seed=0)
    x = np.random.default_rng(1).random(D.shape[1])
    y = D @ x
    sol = spla.lsqr(D.as_linear_operator(), y, atol=1e-12, btol=1e-12)[0]
    np.testing.assert_allclose(D @ sol, y, atol=1e-8)
