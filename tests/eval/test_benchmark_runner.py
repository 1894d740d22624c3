"""benchmarks/common.py (the timing rule) and benchmarks/run_all.py (discovery, assembly with notes)."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, run_all  # noqa: E402


def test_median_time_is_the_median_of_the_runs():
    delays = iter([0.0, 0.12, 0.01, 0.06, 0.2, 0.03])  # one warm-up, then five timed runs

    def fn():
        d = next(delays)
        time.sleep(d)
        return d

    med, times, last = common.median_time(fn, 5, warmup=1)
    assert last == 0.03 and len(times) == 5
    assert med == sorted(times)[2]                     # the middle one of five
    assert times[0] >= 0.12 and times[3] >= 0.2        # the warm-up was not timed
    assert 0.06 <= med < 0.12                          # the run that slept 0.06 s (median of 0.12/0.01/0.06/0.2/0.03)
    with pytest.raises(ValueError, match="repeats"):
        common.median_time(fn, 0)


def test_repeats_at_the_largest_size():
    assert common.repeats_at(1000, 50_000) == 5 and common.repeats_at(50_000, 50_000) == 3
    assert common.repeats_at(1000, 50_000, repeats=2) == 5     # never fewer than 5 below the largest size
    assert common.repeats_at(1000, 50_000, repeats=9) == 9


def test_pick_reference_threads_takes_the_faster_setting_and_restores_torch():
    before = torch.get_num_threads()
    seen = []

    def probe():  # a probe that reports its own cost: 1 thread is "slow", every core "fast"
        seen.append(torch.get_num_threads())
        return 2.0 if torch.get_num_threads() == 1 else 0.5

    choice = common.pick_reference_threads(probe, cores=4)
    assert seen == [1, 4] and choice.threads == 4 and choice.probe_s == {1: 2.0, 4: 0.5}
    assert torch.get_num_threads() == before
    assert choice.describe() == "4 threads (probe: 1 thr 2 s, 4 thr 0.5 s)"
    slow_many = common.pick_reference_threads(lambda: 0.1 if torch.get_num_threads() == 1 else 3.0, cores=2)
    assert slow_many.threads == 1 and slow_many.describe().startswith("1 thread ")
    one_core = common.pick_reference_threads(lambda: 1.0, cores=1)
    assert one_core.threads == 1 and list(one_core.probe_s) == [1]


def test_command_hides_the_output_path():
    assert common.command("bench_fit", ["--quick", "--out", "/tmp/x.md", "--seed", "2"]) == \
        "python -m benchmarks.bench_fit --quick --seed 2"
    assert common.command("bench_index", ["--out=/tmp/y.md"]) == "python -m benchmarks.bench_index"


def test_discover_lists_scripts_with_main_in_order():
    names = run_all.discover()
    assert names[:3] == ["fit", "exact_search", "index"]
    for name in ("index_oos", "market", "harness", "reuse"):
        assert name in names
    assert "common" not in names and "run_all" not in names
    known = [n for n in names if n in run_all.ORDER]
    assert known == sorted(known, key=run_all.ORDER.index)
    assert run_all.main(["--list"]) == 0
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_benchmark", "--list"])


def test_assemble_puts_notes_after_results_and_never_writes_them(tmp_path, monkeypatch):
    results, notes = tmp_path / "results", tmp_path / "notes"
    results.mkdir()
    notes.mkdir()
    (results / "index.md").write_text("## index table\n| a |\n")
    (results / "fit.md").write_text("## fit table\n")
    (results / "zeta.md").write_text("## a new script's table\n")
    (notes / "fit.md").write_text("### fit reading\n")
    (notes / "gpu.md").write_text("### gpu note without results\n")
    (results / run_all.RUNTIMES).write_text(json.dumps(
        {"fit": {"mode": "quick", "wall_s": 12.4, "rc": 0, "finished": "2026-12-01 04:00"}}))
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    out = run_all.assemble(results, tmp_path / "RESULTS.md")
    text = out.read_text()
    order = [text.index(s) for s in ("## fit table", "### fit reading", "## index table", "### gpu note",
                                     "## a new script's table", "## How long each benchmark took")]
    assert order == sorted(order)
    assert text.startswith(run_all.HEADER)
    assert "| bench_fit | quick | 12 | 2026-12-01 04:00 | 0 |" in text
    assert (notes / "fit.md").read_text() == "### fit reading\n"


def test_before_after_checks_out_its_commit_and_cleans_up():
    import subprocess

    from benchmarks import bench_before_after as ba

    head = subprocess.run(["git", "-C", str(ba.AFTER), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    has = subprocess.run(["git", "-C", str(ba.AFTER), "cat-file", "-e", ba.BEFORE_COMMIT + "^{commit}"])
    if has.returncode != 0:
        pytest.skip("a clone without history (the before commit is missing)")
    with ba.temporary_worktree(ba.BEFORE_COMMIT) as tree:
        assert (tree / "lwgpu").is_dir()
        full = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert full.startswith(ba.BEFORE_COMMIT)
    assert not tree.exists()
    listed = subprocess.run(["git", "-C", str(ba.AFTER), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(tree) not in listed
    with pytest.raises(SystemExit, match="cannot check out"):
        with ba.temporary_worktree("0" * 40):
            pass
    assert "before_after" not in run_all.SKIP  # make bench runs it too
