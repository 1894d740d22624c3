"""Optional dependencies of :mod:`lwgpu.distributed`: Dask (``distributed``), ``dask-jobqueue``, ``dask-cuda``.

They are imported only when used, so that ``import lwgpu.distributed`` works (and says what is missing)
on a machine without them. ``pip install 'lwgpu[dist]'`` installs dask, distributed and dask-jobqueue;
``dask-cuda`` comes with ``'lwgpu[dist-cuda]'`` and imports only where CUDA is present.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: module -> what to install for it
_INSTALL = {
    "dask": "pip install 'lwgpu[dist]'  (dask, distributed, dask-jobqueue)",
    "distributed": "pip install 'lwgpu[dist]'  (dask, distributed, dask-jobqueue)",
    "dask.bag": "pip install 'lwgpu[dist]'  (dask, distributed, dask-jobqueue)",
    "dask_jobqueue": "pip install 'lwgpu[dist]'  (or pip install dask-jobqueue)",
    "dask_cuda": "pip install 'lwgpu[dist-cuda]'  (dask-cuda; it needs a CUDA driver, cuda-core and nvidia-ml-py)",
}


def require(module: str, what: str = "lwgpu.distributed") -> ModuleType:
    """Import ``module`` or raise an ImportError that says which feature needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a broken install (dask-cuda without CUDA libraries)
        hint = _INSTALL.get(module, f"pip install {module}")
        raise ImportError(f"{what} needs the module {module!r}, which cannot be imported ({exc}); {hint}") from exc


def worker_addresses(client: object) -> list[str]:
    """The addresses of every worker of a ``distributed.Client``, sorted."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists only some workers by default
    except TypeError:
        info = client.scheduler_info()
    return sorted(info["workers"])
