"""Checkpoint format 2 in one process: tensor files, checksums, old checkpoints, staging, progress."""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash

from fi_dist.rundir import RunDir
from fi_dist.runtime.checkpoint import Checkpointer, layout, tensorfile
from fi_dist.runtime.checkpoint.hashing import (
    SHA256,
    XXH3_128,
    HashingReader,
    HashingWriter,
    digest,
)
from fi_dist.runtime.checkpoint.loader import read_file
from fi_dist.runtime.checkpoint.progress import Meter
from fi_dist.runtime.checkpoint.staging import HostStaging
from fi_dist.runtime.checkpoint.storage import Storage
from fi_dist.runtime.heartbeat import Heartbeat

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_format1"


def _write(tmp: Path, obj, name: str = "x.safetensors") -> tuple[Path, layout.FileEntry]:
    path = tmp / name
    storage = Storage(str(tmp))
    prep = tensorfile.Prepared(obj)
    with storage.open_write(str(path)) as w:
        prep.write_to(w)
    assert w.size == prep.size == path.stat().st_size
    return path, layout.FileEntry(w.size, w.hexdigest)


def _same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def test_tensor_file_round_trip_keeps_structure_and_types(tmp_path: Path) -> None:
    sd = OrderedDict([("w", torch.randn(3, 4)), ("b16", torch.randn(5).bfloat16()),
                      ("mask", torch.tensor([True, False])), ("scalar", torch.tensor(7.5)),
                      ("empty", torch.zeros(0, 3)), ("t", torch.randn(4, 3).t()),
                      ("u32", torch.from_numpy(np.arange(6, dtype=np.uint32)))])
    sd._metadata = OrderedDict([("", {"version": 1}), ("layer", {"version": 2})])  # type: ignore[attr-defined]
    obj = {"model": sd, "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
           "groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "name": None,
                       "flag": True, "inf": float("inf"), "nan": float("nan")}],
           "np": np.arange(3.0), "np_scalar": np.float32(2.5), "np_int": np.int64(4),
           "pickled": (torch.Size([2, 3]), torch.ones(2, dtype=torch.complex128)),
           "big": torch.randn(300_000)}
    path, entry = _write(tmp_path, obj)
    got = read_file(Storage(str(tmp_path)), str(path), entry)
    _same(obj["model"], got["model"])
    assert got["model"]._metadata == sd._metadata  # type: ignore[attr-defined]
    _same(obj["state"], got["state"])
    _same(obj["groups"], got["groups"])
    _same(obj["big"], got["big"])
    assert isinstance(got["np"], np.ndarray) and got["np"].tolist() == [0.0, 1.0, 2.0]
    assert type(got["np_scalar"]) is np.float32 and got["np_scalar"] == 2.5
    assert type(got["np_int"]) is np.int64 and got["np_int"] == 4
    # Types the tree has no tag for travel pickled (loaded with weights_only=True).
    assert got["pickled"][0] == torch.Size([2, 3]) and type(got["pickled"][0]) is torch.Size
    assert got["pickled"][1].dtype == torch.complex128
    assert entry.digest == xxhash.xxh3_128(path.read_bytes()).hexdigest()


def test_tensor_file_is_a_safetensors_file(tmp_path: Path) -> None:
    from safetensors import safe_open

    sd = {"a.weight": torch.randn(64, 32), "a.bias": torch.randn(32).half(),
          "n": torch.tensor(3, dtype=torch.int64)}
    path, _ = _write(tmp_path, sd)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(sd)
        for k, v in sd.items():
            assert torch.equal(f.get_tensor(k), v)
        assert tensorfile.TREE_KEY in f.metadata()


def test_hashing_streams_match_one_shot_digests(tmp_path: Path) -> None:
    chunks = [b"x" * 10, bytes(range(256)) * 5000, b"y" * 3, memoryview(bytearray(2 << 20))]
    whole = b"".join(bytes(c) for c in chunks)
    for algo in (XXH3_128, SHA256):
        seen: list[int] = []
        with open(tmp_path / algo, "wb", buffering=0) as f:
            w = HashingWriter(f, algo, seen.append)
            for c in chunks:
                w.write(c)
            w.close()
        assert w.size == len(whole) == sum(seen)
        assert w.hexdigest == digest(algo, whole) and (tmp_path / algo).read_bytes() == whole
        with open(tmp_path / algo, "rb") as f:
            r = HashingReader(f, algo)
            buf = bytearray(len(whole) + 10)
            assert r.readinto(buf) == len(whole) and r.at_eof()
            assert r.hexdigest() == digest(algo, whole)


def test_corrupt_header_is_rejected_before_any_allocation(tmp_path: Path) -> None:
    path, entry = _write(tmp_path, {"w": torch.randn(10)})
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["w"]["shape"] = [1 << 40]  # asks for 4 TB
    header["w"]["data_offsets"] = [0, 4 << 40]
    raw = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
    with open(bad, "rb") as f, pytest.raises(tensorfile.FormatError, match="cover"):
        tensorfile.read(HashingReader(f, XXH3_128), bad.stat().st_size)
    bad.write_bytes(struct.pack("<Q", 1 << 40) + bytes(data[8:]))
    with open(bad, "rb") as f, pytest.raises(tensorfile.FormatError, match="header of"):
        tensorfile.read(HashingReader(f, XXH3_128), bad.stat().st_size)


class Job:
    def __init__(self, ckpt: Path, **options) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                         torch.nn.Linear(16, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.ck = Checkpointer(str(ckpt), model=self.model, optimizer=self.opt,
                               scheduler=self.sched, **options)

    def run(self, total: int) -> None:
        for _ in self.ck.steps(total):
            loss = self.model(torch.randn(4, 8)).pow(2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.sched.step()


def _digest(tensors) -> str:
    import hashlib

    return hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in tensors)).hexdigest()


def test_format1_checkpoint_written_by_the_old_code_resumes(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "ckpt", tmp_path / "ckpt")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    random.seed(123)
    np.random.seed(123)
    job = Job(tmp_path / "ckpt")
    assert job.ck.resume() == expected["step"]
    job.ck.close()
    assert _digest(job.model.parameters()) == expected["params"]
    assert _digest([job.opt.state[p]["momentum_buffer"] for p in job.model.parameters()]) \
        == expected["momentum"]
    assert job.sched.state_dict() == expected["scheduler"]
    draws = expected["draws"]
    assert torch.randn(3).tolist() == draws["torch"]
    assert random.random() == draws["python"] and float(np.random.rand()) == draws["numpy"]
    m = layout.read_manifest(job.ck.storage, str(tmp_path / "ckpt" / layout.step_dirname(3)))
    assert m.format == 1 and {e.algo for e in m.files.values()} == {SHA256}


def test_new_checkpoints_are_format2_with_xxh3(tmp_path: Path) -> None:
    job = Job(tmp_path, every=2, async_save=False)
    job.run(2)
    m = layout.read_manifest(job.ck.storage, str(tmp_path / layout.step_dirname(2)))
    assert m.format == layout.FORMAT == 2
    assert {e.algo for e in m.files.values()} == {XXH3_128}
    for name, e in m.files.items():
        assert xxhash.xxh3_128((tmp_path / layout.step_dirname(2) / name).read_bytes()
                               ).hexdigest() == e.digest


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-header", "no-manifest"])
def test_damaged_newest_checkpoint_is_named_and_the_previous_used(tmp_path: Path, damage: str,
                                                                 caplog) -> None:
    Job(tmp_path, every=2, keep_last=5).run(6)
    step6 = tmp_path / layout.step_dirname(6)
    victim = step6 / "model.safetensors"
    data = bytearray(victim.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    if damage == "truncate":
        victim.write_bytes(bytes(data[:-7]))
        victim = step6  # scan rejects the directory, naming the file in the reason
    elif damage == "flip-data":
        data[8 + n + 5] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "flip-header":
        data[8 + n // 2] ^= 0x40
        victim.write_bytes(bytes(data))
    else:
        (step6 / layout.MANIFEST).unlink()
        victim = step6
    job = Job(tmp_path, every=2, keep_last=5)
    with caplog.at_level("WARNING", logger="fi_dist.checkpoint"):
        assert job.ck.resume() == 4
    job.ck.close()
    assert str(victim) in caplog.text
    # The damaged file may have been read into the live model first: step 4 replaced it all.
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / layout.step_dirname(4) / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in job.model.state_dict().items())
    if damage.startswith("flip"):
        assert "checksum mismatch" in caplog.text
    elif damage == "truncate":
        assert "model.safetensors: size" in caplog.text
    else:
        assert "no manifest.json" in caplog.text


def test_host_staging_reuses_buffers_and_skips_host_copies_when_asked() -> None:
    staging = HostStaging()
    live = {"w": torch.randn(4, 4), "nested": [torch.ones(2), 3], "s": "x"}
    a = staging.snapshot(live, ("m",))
    assert torch.equal(a["w"], live["w"]) and a["w"].data_ptr() != live["w"].data_ptr()
    live["w"].add_(1)
    b = staging.snapshot(live, ("m",))
    assert b["w"].data_ptr() == a["w"].data_ptr() and torch.equal(b["w"], live["w"])
    c = staging.snapshot(live, ("m",), copy_host=False)
    assert c["w"].data_ptr() == live["w"].data_ptr()
    staging.sync()  # no device copies in flight: a no-op without CUDA


def test_progress_meter_reports_lines_and_heartbeat(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    beat = Heartbeat(run, rank=3, min_interval=0.0)
    lines: list[str] = []
    meter = Meter("save", 40, 2 << 20, rank=3, interval=0.0, out=lines.append, beat=beat)
    meter.add(1 << 20)
    meter.add(1 << 20)
    meter.finish()
    assert lines[0].startswith("fi-dist: rank 3: checkpoint step 40: saving 1/2 MiB")
    assert "saved 2 MiB in" in lines[-1]
    field = run.ranks()[3]["checkpoint"]
    assert field["done"] is True and field["bytes"] == field["total"] == 2 << 20
    quiet: list[str] = []
    short = Meter("load", 1, 10, rank=0, interval=60.0, out=quiet.append, beat=beat)
    short.add(10)
    short.finish()
    assert quiet == []  # a short operation says nothing


def test_dcp_shard_files_round_trip_through_fi_dist_storage(tmp_path: Path) -> None:
    """One process (DCP without a process group): raw aligned pieces, hashed as written."""
    import torch.distributed.checkpoint as dcp

    from fi_dist.runtime.checkpoint.dcp_storage import ALIGN, ShardReader, ShardWriter

    storage = Storage(str(tmp_path))
    state = {"w": torch.randn(33, 7), "b": torch.randn(5).bfloat16(), "n": torch.tensor(3),
             "extra": {"epoch": 4, "name": "x"}}
    writer = ShardWriter(storage, f"{tmp_path}/dcp", threads=2)
    dcp.save(state, storage_writer=writer, no_dist=True)
    assert set(writer.entries) == {".metadata", "__0_0.distcp", "__0_1.distcp"}
    for name, e in writer.entries.items():
        data = (tmp_path / "dcp" / name).read_bytes()
        assert (e.size, e.digest) == (len(data), xxhash.xxh3_128(data).hexdigest())
    md = dcp.FileSystemReader(f"{tmp_path}/dcp").read_metadata()
    assert all(info[1] % ALIGN == 0 for info in md.storage_data.values())

    meta = (tmp_path / "dcp" / ".metadata").read_bytes()
    shards = {"__0_0.distcp", "__0_1.distcp"}
    for mine in (shards, set()):
        # Own files are streamed (and verified); others' pieces are read as byte ranges.
        target = {"w": torch.zeros(33, 7), "b": torch.zeros(5).bfloat16(),
                  "n": torch.tensor(0), "extra": {"epoch": 0, "name": ""}}
        seen: list[int] = []
        reader = ShardReader(storage, f"{tmp_path}/dcp", writer.entries, mine, meta, seen.append)
        dcp.load(target, storage_reader=reader, no_dist=True)
        for k in ("w", "b", "n"):
            assert torch.equal(target[k], state[k])
        assert target["extra"] == {"epoch": 4, "name": "x"}
        assert sum(seen) == (sum(writer.entries[n].size for n in shards) if mine else 0)

    shard = tmp_path / "dcp" / "__0_1.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(BaseException) as info:  # DCP wraps what a reader raises
        dcp.load(target, storage_reader=ShardReader(storage, f"{tmp_path}/dcp", writer.entries,
                                                    shards, meta), no_dist=True)
    assert "__0_1.distcp: checksum mismatch" in str(info.value)


def _planned_load(tmp_path: Path, entries: dict, target: dict, mine: set[str]) -> list[int]:
    """Load the save in ``tmp_path/dcp`` the way a sharded resume does: planned beside
    the stream. Returns the bytes streamed."""
    from fi_dist.runtime.checkpoint.dcp_storage import ShardReader

    seen: list[int] = []
    reader = ShardReader(Storage(str(tmp_path)), f"{tmp_path}/dcp", entries, mine,
                         (tmp_path / "dcp" / ".metadata").read_bytes(), seen.append)
    reader.load(target, True)
    return seen


def test_a_plan_worked_out_beside_the_stream_is_dcps_plan(tmp_path: Path) -> None:
    """Key by key on a helper thread, in the order the files hold the keys: the same reads
    as DCP's planner makes for the whole state, the same state loaded; a piece that does
    not fit fails the load naming the sizes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

    from fi_dist.runtime.checkpoint.dcp_plan import PlanAhead
    from fi_dist.runtime.checkpoint.dcp_storage import ShardReader, ShardWriter

    state = {f"layer{i}": {"w": torch.randn(17, 9), "b": torch.randn(9).bfloat16()}
             for i in range(6)}
    state["step"] = torch.tensor(7)
    state["extra"] = {"epoch": 4, "name": "x"}
    writer = ShardWriter(Storage(str(tmp_path)), f"{tmp_path}/dcp", threads=2)
    dcp.save(state, storage_writer=writer, no_dist=True)

    def blank() -> dict:
        return {**{k: {"w": torch.zeros(17, 9), "b": torch.zeros(9).bfloat16()}
                   for k in state if k.startswith("layer")},
                "step": torch.tensor(0), "extra": {"epoch": 0, "name": ""}}

    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(blank())
    md = ShardReader(Storage(str(tmp_path)), "", {}, set(),
                     (tmp_path / "dcp" / ".metadata").read_bytes()).read_metadata()
    reversed_keys = list(reversed(flat))
    ahead = PlanAhead.start(flat, md, reversed_keys[:3])
    reads = ahead.all()
    assert sorted(map(repr, reads)) == sorted(map(repr, create_default_local_load_plan(flat, md).items))
    assert [r.dest_index.fqn for r in reads[:3]] == reversed_keys[:3]  # planned first

    for mine in ({"__0_0.distcp", "__0_1.distcp"}, set()):  # streamed; read as byte ranges
        target = blank()
        seen = _planned_load(tmp_path, writer.entries, target, mine)
        for k, v in state.items():
            if k.startswith("layer"):
                assert torch.equal(target[k]["w"], v["w"]) and torch.equal(target[k]["b"], v["b"])
        assert int(target["step"]) == 7 and target["extra"] == {"epoch": 4, "name": "x"}
        assert sum(seen) == (sum(writer.entries[n].size for n in mine) if mine else 0)

    mine = {"__0_0.distcp", "__0_1.distcp"}
    misfit = blank()
    misfit["layer3"]["w"] = torch.zeros(17, 10)
    with pytest.raises(ValueError, match=r"Size mismatch .*\[17, 9\].*\[17, 10\].* layer3\.w"):
        _planned_load(tmp_path, writer.entries, misfit, mine)
    grown = {**blank(), "layer9": {"w": torch.zeros(17, 9)}}  # DCP's planner, whole
    with pytest.raises(RuntimeError, match=r"Missing key in checkpoint state_dict: layer9\.w"):
        _planned_load(tmp_path, writer.entries, grown, mine)
    part = {k: v for k, v in blank().items() if k != "layer0"}  # the rest loads
    _planned_load(tmp_path, writer.entries, part, mine)
    assert torch.equal(part["layer5"]["w"], state["layer5"]["w"]) and int(part["step"]) == 7


def test_status_shows_a_checkpoint_in_progress(tmp_path: Path, monkeypatch, capsys) -> None:
    import os

    from fi_dist import cli, rundir

    monkeypatch.chdir(tmp_path)
    run = rundir.create_run(tmp_path)
    run.write_run({"job_state": "running"})
    beat = Heartbeat(run, rank=0, min_interval=0.0)
    run.write_rank(0, node=0, pid=os.getpid(), state="running")
    Meter("save", 40, 1 << 30, rank=0, interval=0.0, out=lambda _: None, beat=beat).add(512 << 20)
    assert cli.main(["status"]) == 0
    assert "[checkpoint save step 40: 512/1024 MiB," in capsys.readouterr().out


def test_retired_checkpoints_leave_nothing_behind_even_when_cut_short(tmp_path: Path,
                                                                      monkeypatch) -> None:
    storage = Storage(str(tmp_path))
    Job(tmp_path, every=1, keep_last=2).run(4)
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        layout.step_dirname(3), layout.step_dirname(4)]
    # A kill inside the delete: the directory is already renamed away from step-*.
    monkeypatch.setattr(storage, "rm", lambda path: None)
    layout.remove(storage, str(tmp_path / layout.step_dirname(3)))
    assert [c.step for c in layout.scan(storage)[0]] == [4] and not layout.scan(storage)[1]
    assert layout.garbage(storage) == [storage.join(f"{layout.TMP_PREFIX}"
                                                    f"{layout.step_dirname(3)}-deleting")]
