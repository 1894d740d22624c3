"""The ``cluster/`` config group: every option composes; the factory builds what each one names, lazily.

Nothing starts while composing. ``slurm``/``pbs`` build their dask-jobqueue cluster objects without
submitting a job (their job scripts carry the configured directives); submitting without ``sbatch``/``qsub``,
``cuda`` without dask-cuda or a GPU, and ``address`` without an address raise ClusterUnavailable saying so.
The ``local`` option runs a whole lwgpu-bench study with its bank sharded over two (thread) workers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

pytest.importorskip("distributed", reason="the cluster configs need dask: pip install 'lwgpu[dist]'")

from lwgpu.cli.bench import CONFIG_DIR, run  # noqa: E402
from lwgpu.distributed.cluster import ClusterUnavailable, make_client, make_cluster  # noqa: E402
from lwgpu.tracking import read_jsonl  # noqa: E402

OPTIONS = sorted(p.stem for p in (Path(CONFIG_DIR) / "cluster").glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_the_default_is_no_cluster():
    cfg = _compose()
    assert cfg.cluster.kind == "none"
    assert make_client(cfg.cluster) is None and make_cluster(cfg.cluster) is None


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_without_starting_anything(option, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    cfg = _compose(f"cluster={option}", "debug=default")
    OmegaConf.resolve(cfg)
    assert cfg.cluster.kind == option
    assert "_target_" not in OmegaConf.to_yaml(cfg.cluster)  # only make_client builds clusters
    if option != "none":
        assert {"shards", "shard_device", "backend"} <= set(cfg.cluster)
    if option == "address":
        assert cfg.cluster.address == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize("kind,directive", [("slurm", "#SBATCH --gres=gpu:1"), ("pbs", "#PBS")])
def test_jobqueue_cluster_objects_are_built_without_submitting(kind, directive):
    cfg = _compose(f"cluster={kind}", "cluster.jobs=0", "cluster.options.walltime=00:20:00",
                   "cluster.options.cores=4", "cluster.options.memory=8GB",
                   "+cluster.options.scheduler_options={dashboard_address:null}")
    cluster = make_cluster(cfg.cluster)
    try:
        script = cluster.job_script()
        assert directive in script and "00:20:00" in script
        assert "--nthreads 4" in script or "--nworkers 1 --nthreads 4" in script
        assert len(cluster.workers) == 0  # nothing submitted
    finally:
        cluster.close()


@pytest.mark.parametrize("kind,tool", [("slurm", "sbatch"), ("pbs", "qsub")])
def test_submitting_without_the_batch_system_is_a_clear_error(kind, tool):
    if shutil.which(tool):
        pytest.skip(f"{tool} is installed here")
    with pytest.raises(ClusterUnavailable, match=f"{tool}.*not on the PATH"):
        make_client(_compose(f"cluster={kind}").cluster)


def test_cuda_without_dask_cuda_or_a_gpu_is_a_clear_error():
    from lwgpu.distributed.cluster import gpu_count

    try:
        import dask_cuda  # noqa: F401
        have = gpu_count() > 0
    except ImportError:
        have = False
    if have:
        pytest.skip("dask-cuda and a GPU are present")
    with pytest.raises(ClusterUnavailable, match="cluster=cuda.*(dask_cuda|GPU).*cluster=local"):
        make_client(_compose("cluster=cuda").cluster)


def test_address_without_an_address_and_unknown_kinds(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ClusterUnavailable, match="cluster.address="):
        make_client(_compose("cluster=address").cluster)
    with pytest.raises(ValueError, match="unknown cluster kind 'kubernetes'"):
        make_client({"kind": "kubernetes"})


def test_a_study_searches_its_bank_sharded_on_a_local_cluster(tmp_path):
    cfg = _compose("debug=default", "market=synthetic_spec_only", "index=none", "device=cpu", "cluster=local",
                   "cluster.options.processes=false", "cluster.options.n_workers=2")
    run(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "results.jsonl") if r["method"].startswith("sharded")]
    got = {(r["method"], r["name"]): r["value"] for r in rows}
    assert got[("sharded", "recall_at_k")] == 1.0  # the sharded search is exact
    assert got[("sharded-mixture", "same_as_single_process")] == 1.0
    exact = {r["name"]: r["value"] for r in read_jsonl(tmp_path / "results.jsonl") if r["method"] == "exact"}
    assert got[("sharded", "top1_accuracy")] == exact["top1_accuracy"]
    assert [r["shards"] for r in rows if r["name"] == "shard_time"] == [2]
