"""Stand-in for ``torchvision``, for running the reference ``learnware`` package in tests and benchmarks.

The torchvision wheel does not load against the CPU torch of this environment, and the reference's
``RKMEImageSpecification`` imports torchvision for one thing: ``transforms.Resize(size,
antialias=True)`` on a float tensor batch. This package provides exactly that transform (bilinear,
antialiased, via ``torch.nn.functional.interpolate``) and nothing else. It is never installed with
lwgpu: tests and benchmarks put ``benchmarks/ref_shims`` on ``sys.path`` themselves, and only when
the real torchvision cannot be imported.
"""
from . import transforms  # noqa: F401  (relative: works when loaded by file path)

__version__ = "0.0.0+lwgpu-shim"
