"""Read back what an offline wandb run logged, from its ``run-<id>.wandb`` file (test helper).

wandb >= 0.2x writes offline runs through its Go core and no longer ships the Python reader
(``wandb.sdk.internal.datastore``) nor ``files/wandb-summary.json`` / ``config.yaml`` for offline runs.
The file keeps the datastore's layout: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of records, each ``crc32 (4) | length (2, little endian) | type (1) | data`` with the
LevelDB log types FULL=1, FIRST=2, MIDDLE=3, LAST=4; a record's data is a serialized
``wandb.proto.wandb_internal_pb2.Record``. This module decodes it with wandb's own protobuf classes.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def offline_run_dir(root: str | Path) -> Path:
    """The one ``offline-run-*`` folder under ``root`` (``$WANDB_DIR``); AssertionError if not exactly one."""
    runs = sorted(Path(root).glob("**/offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {root}, found {runs}"
    return runs[0]


def records(run_dir: str | Path) -> list[Any]:
    """Every ``Record`` of the run's ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    raw = path.read_bytes()
    if len(raw) < 7:
        return []
    assert raw[:7] == HEADER, f"{path} does not start with the wandb datastore header: {raw[:7]!r}"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: too short for a record header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        data = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            out.append(pending + data)
            pending = b""
    recs = []
    for data in out:
        r = pb.Record()
        r.ParseFromString(data)
        recs.append(r)
    return recs


def _items(items) -> dict[str, Any]:
    """Protobuf items (``key`` or a ``nested_key`` path, ``value_json``) as a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Recursive dict update (a summary update of ``results/path`` keeps ``results/_type``)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def wait_until_written(run_dir: str | Path, timeout: float = 30.0) -> None:
    """Wait until the run's file ends with its ``exit`` record and stops changing.

    ``run.finish()`` can return before wandb's core process has flushed the offline file (measured
    with wandb 0.31: about one read in three right after ``finish`` sees an incomplete file).
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        files = list(Path(run_dir).glob("run-*.wandb"))
        data = files[0].read_bytes() if files else b""
        if data and data == last and any(r.WhichOneof("record_type") == "exit" for r in records(run_dir)):
            return
        last = data
        time.sleep(0.25)
    raise AssertionError(f"{run_dir}: the offline run file was not complete after {timeout} s")


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``config`` (final values), ``history`` (one dict per logged step) and ``summary`` (last values) of a run,
    once its file is complete."""
    wait_until_written(run_dir)
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for r in records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config.update(_items(r.run.config.update))
        elif kind == "config":
            config.update(_items(r.config.update))
        elif kind == "history":
            history.append(_items(r.history.item))
        elif kind == "summary":
            _merge(summary, _items(r.summary.update))
    config.pop("_wandb", None)
    return {"config": config, "history": history, "summary": summary}
