"""Checkpoints on a real S3-compatible server (moto, loopback) and Flyte's checkpoint."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from fi_dist.runtime.checkpoint import Checkpointer, layout
from fi_dist.runtime.checkpoint.flyte import rank_dir, restore_from_flyte, save_to_flyte
from fi_dist.runtime.checkpoint.storage import Storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_options(s3_endpoint, monkeypatch) -> dict:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    if not fs.exists("ckpt-bucket"):
        fs.mkdir("ckpt-bucket")
    return {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}


def _job(url: str, opts: dict, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, opt, Checkpointer(url, model=model, optimizer=opt, storage_options=opts, **kw)


def _train(model, opt, ck, total):
    for _ in ck.steps(total):
        loss = model(torch.randn(3, 4)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_s3_round_trip_and_retention(s3_options, tmp_path: Path) -> None:
    url = "s3://ckpt-bucket/run1"
    model, opt, ck = _job(url, s3_options, every=2, keep_last=2)
    _train(model, opt, ck, 6)
    storage = Storage(url, s3_options)
    complete, rejected = layout.scan(storage)
    assert [c.step for c in complete] == [6, 4] and not rejected
    # The data lives under a per-save prefix; the manifest (last PUT) is the commit.
    names = set(complete[0].manifest.files)
    assert all("/" in n for n in names) and any(n.endswith("model.safetensors") for n in names)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, ck2 = _job(url, s3_options, every=2)
    assert ck2.resume() == 6
    for a, b in zip(expected, model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == 6
    ck2.close()


def test_s3_step_without_manifest_is_ignored(s3_options) -> None:
    url = "s3://ckpt-bucket/run2"
    model, opt, ck = _job(url, s3_options, every=2)
    _train(model, opt, ck, 2)
    storage = Storage(url, s3_options)
    storage.write_bytes(storage.join(layout.step_dirname(4), "x", "model.pt"), b"torn")
    _, _, ck2 = _job(url, s3_options, every=2)
    assert ck2.resume() == 2
    ck2.close()


def test_flyte_ranks_restore_without_clobbering(tmp_path: Path) -> None:
    from flytekit.core.checkpointer import SyncCheckpoint

    prev = tmp_path / "prev-attempt"
    committed = prev / layout.step_dirname(3)
    committed.mkdir(parents=True)
    (committed / layout.MANIFEST).write_text("{}")
    (committed / "rank-00001.pt").write_bytes(b"r1")
    dest = tmp_path / "this-attempt"
    cp = SyncCheckpoint(checkpoint_dest=str(dest), checkpoint_src=str(prev))

    local = tmp_path / "local"
    got = {r: restore_from_flyte(cp, local, rank=r) for r in (0, 1)}
    assert got[0] == rank_dir(local, 0) and got[1] == rank_dir(local, 1) and got[0] != got[1]
    for r in (0, 1):
        assert (rank_dir(local, r) / layout.step_dirname(3) / "rank-00001.pt").read_bytes() == b"r1"
    # A rank writing into its copy does not touch another rank's copy.
    (rank_dir(local, 1) / layout.step_dirname(3) / "rank-00001.pt").write_bytes(b"changed")
    assert (rank_dir(local, 0) / layout.step_dirname(3) / "rank-00001.pt").read_bytes() == b"r1"

    # Only rank 0 uploads, and only committed checkpoints.
    ckpt_dir = tmp_path / "ckpt"
    (ckpt_dir / layout.step_dirname(5)).mkdir(parents=True)
    (ckpt_dir / layout.step_dirname(5) / layout.MANIFEST).write_text("{}")
    (ckpt_dir / f"{layout.TMP_PREFIX}{layout.step_dirname(6)}-x").mkdir()
    assert not save_to_flyte(cp, ckpt_dir, rank=1)
    assert not dest.exists()
    assert save_to_flyte(cp, ckpt_dir, rank=0)
    assert sorted(p.name for p in dest.iterdir()) == [layout.step_dirname(5)]


def test_flyte_no_previous_attempt(tmp_path: Path) -> None:
    from flytekit.core.checkpointer import SyncCheckpoint

    cp = SyncCheckpoint(checkpoint_dest=str(tmp_path / "d"))
    assert restore_from_flyte(cp, tmp_path / "local", rank=0) is None
