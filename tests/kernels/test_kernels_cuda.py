"""The CUDA kernel ``lwgpu/kernels/cuda/mmd.cu``, checked without a GPU wherever possible.

* Compiled by the compilers that build it for a GPU: nvcc for sm_80/sm_90 (as ``make nvcc`` does), and
  NVRTC through ctypes with exactly the options CuPy's ``RawModule`` compiles it with at run time
  (``cupy_mmd.NVRTC_OPTIONS`` + CuPy's ``-ftz=true`` + ``-arch=compute_80|compute_90``): a clean log, all
  eight ``extern "C"`` entry points in the PTX with ``.maxntid`` = the launcher's block size.
* Executed on the CPU: ``tests/kernels/cuda_host`` compiles a harness that ``#include``s this very
  ``mmd.cu`` with g++ and runs its ``__global__`` kernels with the grid, block and dynamic shared memory of
  the launches ``cupy_mmd.launch_plan`` / ``cupy_mmd.launch_grid`` give (one std::thread per CUDA thread,
  ``__syncthreads`` as a barrier, NaN-poisoned shared memory, guarded global arrays). Its float64 output
  is compared with the float64 brute force of ``lwgpu/kernels/reference.py`` over every instantiation
  (d = 1 ... 300), ragged K padded with zero weights as the bank packs them, K above the block size,
  several blocks per query and several shared-memory tiles of query points, float32 and float64
  accumulation.
* The comparison can fail: ``test_mutated_kernel_is_caught`` copies ``mmd.cu`` to a temporary folder,
  applies one mutation, builds the harness against the mutant and asserts that its results no longer
  match (the test's bound: 1e-3). Measured on the "blocks" case (error relative to the size of the terms,
  ``|dist - ref| / (<A,A> + <B,B> + 2|<A,B>|)``; the intact kernel: 7.5e-8):

  | mutation in mmd.cu | what the mutant gives |
  | --- | --- |
  | exponent sign: ``bterm = -g2 * bn`` -> ``bterm = g2 * bn`` | error 1.7 |
  | reduction index: ``part[t * K + j]`` -> ``part[t * K + j + 1]`` | NaN (it reads shared memory no thread wrote) |
  | loop bound: ``min(qtile, Kq - i0)`` -> ``min(qtile, Kq - i0 - 1)`` | error 0.12 (the last query point is lost) |

  and ``test_host_launch_needs_the_planned_shared_memory``: one byte less dynamic shared memory than
  ``launch_plan`` computes fails the launch ("the kernel wrote at byte 2447 of dynamic shared memory, past
  the 2447 bytes given at launch").

* On a GPU (``-m gpu``): the CuPy launch against the reference, and the host emulation against the GPU.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lwgpu.bank import SpecBank
from lwgpu.device import cupy_available
from lwgpu.kernels import cupy_mmd, mmd2
from lwgpu.spec.rkme import RKME
from lwgpu_testutil import random_spec_arrays
from tests.kernels.cuda_host import harness, nvrtc
from tests.kernels.kernel_helpers import ragged_bank, reference_terms, rel_err

ENTRY_POINTS = [f"mmd_cross_{a}_{w}" for a in ("f32", "f64") for w in ("d16", "d32", "d64", "dgen")]
SOURCE_TEXT = cupy_mmd.SOURCE.read_text()
GAMMA = 0.1


def _source_entry_points() -> list[str]:
    return re.findall(r"^LWGPU_MMD_ENTRY\((\w+),", SOURCE_TEXT, flags=re.M)


def test_entry_points_match_source_and_plan():
    """The kernels the launcher can ask for are exactly those mmd.cu defines, with its block size."""
    assert _source_entry_points() == ENTRY_POINTS
    asked = {cupy_mmd.launch_plan(5, 7, d, acc)["kernel"] for d in (1, 16, 17, 32, 33, 64, 65, 300)
             for acc in ("float32", "float64")}
    assert asked == set(ENTRY_POINTS)
    bounds = {int(b) for b in re.findall(r"__launch_bounds__\((\d+)", SOURCE_TEXT)}
    assert bounds == {cupy_mmd.THREADS}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles(tmp_path, arch):
    cubin = tmp_path / f"mmd_{arch}.cubin"
    res = subprocess.run(
        ["nvcc", *cupy_mmd.NVRTC_OPTIONS, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o", str(cubin),
         str(cupy_mmd.SOURCE)],
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


LIBNVRTC = nvrtc.find_libnvrtc()


@pytest.mark.skipif(LIBNVRTC is None, reason="libnvrtc not found (CUDA toolkit next to nvcc, $CUDA_PATH, or the "
                                             "nvidia-cuda-nvrtc wheel of the dev extra)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_like_cupy(tmp_path, arch):
    """NVRTC, with CuPy's run-time options: clean log, every entry point unmangled, 256-thread bound, ex2."""
    options = cupy_mmd.NVRTC_OPTIONS + nvrtc.CUPY_EXTRA_OPTIONS + (f"-arch={arch}",)
    res = nvrtc.compile_source(LIBNVRTC, SOURCE_TEXT, "mmd.cu", options)
    assert res.ok, f"NVRTC {res.version} {options}:\n{res.log}"
    assert res.log.strip() == "", f"NVRTC {res.version} warnings:\n{res.log}"
    sm = arch.replace("compute_", "sm_")
    assert re.search(rf"^\.target {sm}\b", res.ptx, flags=re.M)
    assert re.findall(r"^\.visible \.entry (\w+)\(", res.ptx, flags=re.M) == ENTRY_POINTS
    assert len(re.findall(rf"\.maxntid {cupy_mmd.THREADS}, 1, 1", res.ptx)) == len(ENTRY_POINTS)
    assert "ex2.approx.ftz.f32" in res.ptx
    if arch == "compute_80":  # the same call does report a broken source
        bad = nvrtc.compile_source(LIBNVRTC, SOURCE_TEXT.replace("float bn = 0.f;", "float bn = ;"), "mmd.cu",
                                   options)
        assert not bad.ok and "error" in bad.log
    ptxas = nvrtc.find_ptxas()
    if ptxas and nvrtc.tool_release(ptxas) >= res.version:  # as the driver's JIT would: no entry point spills
        (tmp_path / "mmd.ptx").write_text(res.ptx)
        out = subprocess.run([ptxas, f"-arch={sm}", "-v", str(tmp_path / "mmd.ptx"), "-o", str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        spills = [ln for ln in out.stderr.splitlines() if "spill stores" in ln]
        assert len(spills) == len(ENTRY_POINTS) and all(" 0 bytes spill stores" in ln for ln in spills), spills


@pytest.mark.parametrize("kq,k,d,acc", [(100, 100, 16, "float32"), (7, 3, 40, "float64"), (100, 100, 512, "float32"),
                                        (1, 1000, 64, "float64")])
def test_launch_plan_fits_shared_memory(kq, k, d, acc):
    plan = cupy_mmd.launch_plan(kq, k, d, acc)
    assert plan["smem"] <= cupy_mmd.SMEM_BYTES and 1 <= plan["qtile"] <= kq
    assert plan["ds"] % 4 == 0 or plan["dr"] == 0
    assert plan["ds"] >= d and plan["kernel"] in ENTRY_POINTS
    with pytest.raises(ValueError, match="accumulate"):
        cupy_mmd.launch_plan(kq, k, d, "float16")


def test_launch_grid_splits_queries_at_grid_y_limit():
    plan = cupy_mmd.launch_plan(10, 9, 16, "float32")  # spb = 512 // 9 = 56
    launches = cupy_mmd.launch_grid(70_000, 1_000, plan)
    assert [(la.q0, la.q1) for la in launches] == [(0, 65_535), (65_535, 70_000)]
    assert [la.grid for la in launches] == [(18, 65_535), (18, 4_465)]  # ceil(1000 / 56) = 18
    assert all(la.block == (256,) and la.shared_mem == plan["smem"] for la in launches)
    assert cupy_mmd.launch_grid(0, 5, plan) == [] and cupy_mmd.launch_grid(5, 0, plan) == []


# ---- the kernel itself, executed on the CPU -------------------------------------------------------------------


MUTATIONS = {  # name: (text in mmd.cu, its mutant)
    "exponent_sign": ("const float bterm = -g2 * bn;", "const float bterm = g2 * bn;"),
    "reduction_index": ("tot += part[t * K + j];", "tot += part[t * K + j + 1];"),
    "loop_bound": ("const int nt = min(qtile, Kq - i0);", "const int nt = min(qtile, Kq - i0 - 1);"),
}


@pytest.fixture(scope="module")
def host_libs(tmp_path_factory):
    """The harness built against mmd.cu ("intact") and against each mutant of MUTATIONS, compiled in parallel."""
    if harness.compiler() is None:
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX): the host emulation of mmd.cu cannot be built")
    jobs = {"intact": (cupy_mmd.SOURCE.parent, tmp_path_factory.mktemp("intact"))}
    for name, (old, new) in MUTATIONS.items():
        assert SOURCE_TEXT.count(old) == 1, f"mutation site {old!r} no longer in mmd.cu: update MUTATIONS"
        folder = tmp_path_factory.mktemp(name)
        (folder / "mmd.cu").write_text(SOURCE_TEXT.replace(old, new))
        jobs[name] = (folder, folder)
    return dict(zip(jobs, harness.build_many(list(jobs.values()))))


@pytest.fixture(scope="module")
def host_lib(host_libs):
    return host_libs["intact"]


def _queries(rng, n, kq, d, scale, shift):
    """n query specs, the first with exactly kq points (so the last padded slot is real), the rest 1..kq."""
    specs = []
    for i in range(n):
        z, b = random_spec_arrays(rng, kq if i == 0 else int(rng.integers(1, kq + 1)), d, scale)
        specs.append(RKME(z + shift + 3.0 * i, b, GAMMA))  # queries far apart: each is centred on itself
    return SpecBank.from_specs(specs)


def _case(rng, d, n_bank, kmax, n_q, kq):
    scale = 2.0 / np.sqrt(d)  # gamma |a - b|^2 ~ 0.8: kernel values spread over (0, 1)
    bank, _ = ragged_bank(rng, n_bank, kmax, d, gamma=GAMMA, scale=scale, shift=5.0)
    return _queries(rng, n_q, kq, d, scale, shift=5.0), bank


def _host_dist(lib, q, bank, acc):
    cross = harness.cross_terms(lib, q.z, q.beta, bank.z, bank.beta, bank.gamma, acc)
    return q.self_inner.numpy()[:, None] + bank.self_inner.numpy()[None, :] - 2.0 * cross


CASES = {  # name: (d, bank specs, max K, queries, query K); the property each case covers
    "d1": (1, 20, 5, 2, 4),  # d = 1 in the d16 kernel (15 zero-padded register lanes)
    "blocks": (3, 130, 9, 3, 6),  # spb = 56: three blocks per query, the last one partial
    "k_over_block": (17, 3, 300, 2, 5),  # K up to 300 > 256 threads: spb = 1, two rounds of the block
    "tiles_d64": (64, 7, 9, 2, 200),  # Kq = 200 > qtile = 178: query points in two shared-memory tiles
    "generic": (65, 9, 7, 3, 5),  # d > 64: the generic kernel (centre in shared memory)
    "generic_tiles": (300, 5, 5, 2, 50),  # generic kernel, Kq = 50 > qtile = 38
}


@pytest.mark.parametrize("acc", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_on_host_matches_reference(host_lib, case, acc):
    rng = np.random.default_rng(sum(map(ord, case)))
    d, n_bank, kmax, n_q, kq = CASES[case]
    q, bank = _case(rng, d, n_bank, kmax, n_q, kq)
    plan = cupy_mmd.launch_plan(q.K, bank.K, d, acc)
    if case.endswith("tiles") or case == "tiles_d64":
        assert plan["qtile"] < q.K  # the case does exercise the tiled path
    if case == "blocks":
        assert cupy_mmd.launch_grid(n_q, n_bank, plan)[0].grid == (3, n_q)
    if case == "k_over_block":
        assert bank.K > cupy_mmd.THREADS and bank.K % cupy_mmd.THREADS != 0
    got = _host_dist(host_lib, q, bank, acc)
    dist, terms = reference_terms(q, bank)
    assert np.all(np.isfinite(got))
    assert rel_err(got, dist, terms) < 1e-5


def test_host_launch_needs_the_planned_shared_memory(host_lib):
    """One byte less dynamic shared memory than launch_plan computes: the kernel writes past the end."""
    q, bank = _case(np.random.default_rng(1), 3, 130, 9, 2, 6)
    plan = cupy_mmd.launch_plan(q.K, bank.K, 3, "float32")
    qp, qn, qw, center = cupy_mmd.prepare_queries(q.z, q.beta, GAMMA, plan["ds"])
    with pytest.raises(harness.EmulationError, match="past the"):
        harness.launch(host_lib, plan, cupy_mmd.launch_grid(2, 130, plan)[0], plan["smem"] - 1, qp, qn, qw,
                       bank.z, bank.beta, center, GAMMA)


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_kernel_is_caught(host_libs, mutation):
    q, bank = _case(np.random.default_rng(2), 3, 130, 9, 3, 6)
    dist, terms = reference_terms(q, bank)
    assert rel_err(_host_dist(host_libs["intact"], q, bank, "float32"), dist, terms) < 1e-5  # the intact kernel
    try:
        got = _host_dist(host_libs[mutation], q, bank, "float32")
    except harness.EmulationError:
        return
    err = rel_err(got, dist, terms)
    assert not np.isfinite(err) or err > 1e-3, f"mutant {mutation} still matches (error {err:.2e})"


# ---- on a GPU --------------------------------------------------------------------------------------------------


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


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["blocks", "tiles_d64", "generic_tiles"])
def test_host_emulation_matches_gpu(host_lib, case):
    """The CPU harness and the GPU run the same kernel on the same inputs: same cross terms."""
    pytest.importorskip("cupy")
    if not cupy_available():
        pytest.skip("CuPy sees no GPU")
    d, n_bank, kmax, n_q, kq = CASES[case]
    q, bank = _case(np.random.default_rng(3), d, n_bank, kmax, n_q, kq)
    host = harness.cross_terms(host_lib, q.z, q.beta, bank.z, bank.beta, GAMMA, "float64")
    gpu = cupy_mmd.cross_terms(q.z.cuda(), q.beta.cuda(), bank.z, bank.beta, GAMMA, "float64").cpu().numpy()
    scale = np.sqrt(q.self_inner.numpy()[:, None] * bank.self_inner.numpy()[None, :])
    assert float(np.max(np.abs(host - gpu) / scale)) < 1e-6
