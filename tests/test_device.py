"""Device resolution and dtype policy."""
import pytest
import torch

from lwgpu.device import available, describe, resolve_device, resolve_dtype


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.gpu
def test_cuda_index_out_of_range():
    with pytest.raises(ValueError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_bad_device_names():
    for bad in ("tpu", "gpu!", "mps"):
        with pytest.raises(ValueError):
            resolve_device(bad)


def test_dtype_policy():
    assert resolve_dtype(None) == torch.float32
    assert resolve_dtype("float64") == torch.float64 and resolve_dtype(torch.float32) == torch.float32
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype("float16")


def test_available_report():
    info = available()
    assert {"torch", "cuda", "cupy", "numba", "faiss", "faiss_gpu"} <= set(info)
    assert info["numba"] is True and info["faiss"] is True
    assert describe("cpu").startswith("cpu:")
