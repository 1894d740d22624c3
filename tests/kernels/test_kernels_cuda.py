"""CUDA kernel: nvcc compiles it for sm_80/sm_90 (CI, no GPU needed); host-side preparation checked on
the CPU against the float64 reference; the CuPy launch itself runs under the gpu marker."""
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import cupy_available
from lwgpu.kernels import cupy_mmd, mmd2
from lwgpu.spec.rkme import RKME
from tests.kernels.kernel_helpers import ragged_bank, reference_terms, rel_err

ENTRY_POINTS = [f"mmd_cross_{a}_{w}" for a in ("f32", "f64") for w in ("d16", "d32", "d64", "dgen")]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles(tmp_path, arch):
    cubin = tmp_path / f"mmd_{arch}.cubin"
    res = subprocess.run(
        ["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o", str(cubin), str(cupy_mmd.SOURCE)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    log = res.stderr
    for name in ENTRY_POINTS:  # every entry point exists unmangled (extern "C") for RawModule.get_function
        assert f"Compiling entry function '{name}'" in log
    assert "spill stores" in log  # ptxas -v reported register use
    for line in log.splitlines():  # no entry point spills registers to local memory
        if "spill stores" in line:
            assert line.strip().split(" bytes stack frame, ")[1].startswith("0 bytes spill stores"), line


@pytest.mark.parametrize("kq,k,d,acc", [(100, 100, 16, "float32"), (7, 3, 40, "float64"), (100, 100, 512, "float32"),
                                        (1, 1000, 64, "float64")])
def test_launch_plan_fits_shared_memory(kq, k, d, acc):
    plan = cupy_mmd.launch_plan(kq, k, d, acc)
    assert plan["smem"] <= cupy_mmd.SMEM_BYTES and 1 <= plan["qtile"] <= kq
    assert plan["ds"] % 4 == 0 or plan["dr"] == 0
    assert plan["ds"] >= d and plan["kernel"] in ENTRY_POINTS
    with pytest.raises(ValueError, match="accumulate"):
        cupy_mmd.launch_plan(kq, k, d, "float16")


def emulate_kernel(qp, qn, qw, bz, bb, center, gamma, d):
    """What mmd.cu computes from the prepared arrays, in float64 numpy (base-2 exponent as in the kernel)."""
    g2 = gamma * cupy_mmd.LOG2E
    zc = bz[None].astype(np.float64) - center[:, None, None, :].astype(np.float64)  # (Q, T, K, d)
    bn = g2 * (zc * zc).sum(-1)  # (Q, T, K)
    e = np.einsum("qid,qtjd->qitj", qp[:, :, :d].astype(np.float64), zc) - qn[:, :, None, None] - bn[:, None]
    k = np.exp2(np.minimum(e, 0.0))
    return np.einsum("qi,qitj,tj->qt", qw.astype(np.float64), k, bb.astype(np.float64))


@pytest.mark.parametrize("d", [3, 40, 100])
def test_host_preparation_matches_reference(rng, d):
    bank, _ = ragged_bank(rng, 9, 6, d, scale=0.4, shift=5.0)
    q, _ = ragged_bank(rng, 3, 5, d, scale=0.4, shift=5.0)
    q.z[1] += 3.0  # queries far apart: each is centred on itself
    plan = cupy_mmd.launch_plan(q.K, bank.K, d, "float32")
    qp, qn, qw, center = (t.numpy() for t in cupy_mmd.prepare_queries(q.z, q.beta, bank.gamma, plan["ds"]))
    assert qp.shape == (3, q.K, plan["ds"]) and np.all(qp[:, :, d:] == 0)
    cross = emulate_kernel(qp, qn, qw, bank.z.numpy(), bank.beta.numpy(), center, bank.gamma, d)
    dist = q.self_inner.numpy()[:, None] + bank.self_inner.numpy()[None, :] - 2 * cross
    ref_dist, terms = reference_terms(q, bank)
    assert rel_err(dist, ref_dist, terms) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("acc", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 16, 33, 64, 65, 300])
def test_cupy_kernel_matches_reference(rng, acc, d):
    pytest.importorskip("cupy")
    if not cupy_available():
        pytest.skip("CuPy sees no GPU")
    bank, _ = ragged_bank(rng, 301, 9, d, scale=0.5)
    q, qs = ragged_bank(rng, 5, 7, d, scale=0.5)
    got = mmd2(qs, bank, backend="cuda", device="cuda", accumulate=acc, tile=97)
    dist, terms = reference_terms(q, bank)
    assert got.device.type == "cuda" and rel_err(got, dist, terms) < 1e-5
    big = SpecBank.from_arrays(rng.normal(size=(2000, 100, 16)).astype(np.float32),
                               np.full((2000, 100), 0.01, np.float32), 0.1).to("cuda")
    qq = RKME(rng.normal(size=(100, 16)), np.full(100, 0.01), 0.1)
    a = mmd2(qq, big, backend="cuda", device="cuda", accumulate=acc)
    b = mmd2(qq, big.to(dtype="float64"), backend="torch", device="cuda")  # float64 torch on the GPU
    assert torch.allclose(a, b, atol=1e-6)
