"""Dask clusters from the ``cluster/`` Hydra configs: :func:`make_cluster`, :func:`make_client`, :func:`connect`.

A config (``configs/cluster/<kind>.yaml``, or any mapping) names a ``kind`` and the constructor's own
keyword arguments under ``options``; nothing is started until :func:`make_client` is called:

=========  =====================================================================================
kind       what :func:`make_cluster` builds
=========  =====================================================================================
none       nothing (:func:`make_client` returns None: everything runs in this process)
local      ``distributed.LocalCluster(**options)``: worker processes on this machine
cuda       ``dask_cuda.LocalCUDACluster(**options)``: one worker per visible GPU (needs dask-cuda)
slurm      ``dask_jobqueue.SLURMCluster(**options)``, then ``scale(jobs=jobs)`` (needs ``sbatch``)
pbs        ``dask_jobqueue.PBSCluster(**options)``, then ``scale(jobs=jobs)`` (needs ``qsub``)
address    no cluster: :func:`make_client` connects to the running scheduler at ``address``
=========  =====================================================================================

``wait_for_workers`` (int) makes :func:`make_client` wait until that many workers are up (``timeout``
seconds), which a batch-queue cluster needs before a bank can be sharded over it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Iterator, Mapping

from ._deps import require, worker_addresses

logger = logging.getLogger(__name__)

KINDS = ("none", "local", "cuda", "slurm", "pbs", "address")
_JOBQUEUE = {"slurm": ("SLURMCluster", "sbatch"), "pbs": ("PBSCluster", "qsub")}


class ClusterUnavailable(RuntimeError):
    """The configured cluster cannot be made here (a missing package, GPU, batch system or address)."""


def _plain(cfg: Any) -> dict[str, Any]:
    """A Hydra DictConfig (resolved) or a mapping as a plain dict."""
    if cfg is None:
        return {"kind": "none"}
    try:
        from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    if isinstance(cfg, str):
        return {"kind": cfg}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a cluster config must be a mapping with a 'kind', got {type(cfg).__name__}")
    return dict(cfg)


def _kind(c: Mapping[str, Any]) -> str:
    kind = str(c.get("kind", "none")).lower()
    if kind not in KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}; use one of {KINDS} (configs/cluster/)")
    return kind


def gpu_count() -> int:
    """GPUs visible to this process (torch's view; 0 without CUDA)."""
    import torch  # noqa: PLC0415

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_cluster(cfg: Any) -> Any:
    """The cluster object a config describes (started, but with no batch jobs submitted yet).

    Returns None for ``none`` and the scheduler address (a str) for ``address``. Raises
    :class:`ClusterUnavailable` with what is missing and what to use instead.
    """
    c = _plain(cfg)
    kind = _kind(c)
    opts = dict(c.get("options") or {})
    if kind == "none":
        return None
    if kind == "address":
        address = c.get("address") or os.environ.get("DASK_SCHEDULER_ADDRESS")
        if not address:
            raise ClusterUnavailable("cluster=address needs the scheduler's address: cluster.address=tcp://host:8786 "
                                     "(or set DASK_SCHEDULER_ADDRESS)")
        return str(address)
    if kind == "local":
        distributed = require("distributed", "cluster=local")
        return distributed.LocalCluster(**opts)
    if kind == "cuda":
        try:
            dask_cuda = require("dask_cuda", "cluster=cuda")
        except ImportError as exc:
            raise ClusterUnavailable(f"{exc}. On a machine without GPUs use cluster=local") from exc
        if gpu_count() == 0:
            raise ClusterUnavailable("cluster=cuda needs NVIDIA GPUs, but none is visible to this process "
                                     "(torch.cuda.is_available() is False); use cluster=local on a CPU machine")
        return dask_cuda.LocalCUDACluster(**opts)
    cls_name, submit = _JOBQUEUE[kind]
    jobqueue = require("dask_jobqueue", f"cluster={kind}")
    cluster = getattr(jobqueue, cls_name)(**opts)
    logger.info("cluster=%s: job script\n%s", kind, cluster.job_script())
    return cluster


def make_client(cfg: Any) -> Any:
    """A ``distributed.Client`` for the configured cluster, or None for ``kind: none``.

    For ``slurm``/``pbs`` the ``jobs`` batch jobs are submitted first (:class:`ClusterUnavailable` when
    ``sbatch``/``qsub`` is not on the PATH). Close it with :func:`close_client` (which also stops a
    cluster this function started), or use :func:`connect`.
    """
    c = _plain(cfg)
    kind = _kind(c)
    if kind == "none":
        return None
    distributed = require("distributed", f"cluster={kind}")
    if kind in _JOBQUEUE and int(c.get("jobs") or 0) > 0:
        submit = _JOBQUEUE[kind][1]
        if shutil.which(submit) is None:
            raise ClusterUnavailable(f"cluster={kind} submits its workers with {submit!r}, which is not on the PATH "
                                     f"here; run from a {kind.upper()} login node, or use cluster=local")
    cluster = make_cluster(c)
    try:
        if kind in _JOBQUEUE and int(c.get("jobs") or 0) > 0:
            cluster.scale(jobs=int(c["jobs"]))
        client = distributed.Client(cluster)
    except BaseException:
        if cluster is not None and not isinstance(cluster, str):
            cluster.close()
        raise
    client._lwgpu_cluster = None if isinstance(cluster, str) else cluster  # closed by close_client
    n_wait = int(c.get("wait_for_workers") or 0)
    if n_wait:
        client.wait_for_workers(n_wait, timeout=c.get("timeout"))
    logger.info("cluster=%s: %d workers at %s", kind, len(worker_addresses(client)),
                client.scheduler.address)
    return client


def close_client(client: Any) -> None:
    """Close ``client`` and the cluster :func:`make_client` started for it (a scheduler it only connected to
    is left running)."""
    if client is None:
        return
    cluster = getattr(client, "_lwgpu_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextlib.contextmanager
def connect(cfg: Any) -> Iterator[Any]:
    """``with connect(cfg) as client:`` :func:`make_client`, closed (with its cluster) on exit."""
    client = make_client(cfg)
    try:
        yield client
    finally:
        close_client(client)
