"""Tests of brainae.datasets and ``brainae fetch``: a mirror folder, a loopback HTTP mirror (pooch), checksums,
the derived participants table, and the tests' own data look-up (skip, or fail under BRAINAE_REQUIRE_DATA)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest
from typer.testing import CliRunner

import brainae.datasets as ds
import conftest
from brainae.cli import app
from brainae.errors import BrainaeError

runner = CliRunner()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TABLE = b"MRID,Age,Sex\nA1,30.5,M\nB2,41.0,F\nC3,52.25,F\n"
FILES = {"one.bin": b"\x00\x01 first file", "sub/two.bin": b"second file" * 100}
DERIVED = b"MRID,Age,Sex\r\nC3,52.25,F\r\nA1,30.5,M\r\n"  # rows C3 then A1, CRLF


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror folder ``<mirror>/tiny/<file>`` and a registry with one data set ``tiny`` pointing at it."""
    root = tmp_path / "mirror"
    for rel, data in FILES.items():
        (root / "tiny" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "tiny" / rel).write_bytes(data)
    (root / "public").mkdir()
    (root / "public" / "table.csv").write_bytes(TABLE)
    (root / "tiny" / "participants.csv").write_bytes(DERIVED)
    monkeypatch.delenv("BRAINAE_DATA_URL", raising=False)
    monkeypatch.setenv("BRAINAE_DATA", str(tmp_path / "cache"))
    return root


def _register(monkeypatch, base_url: str | None) -> ds.Dataset:
    files = tuple(
        ds.DataFile(rel, _sha(d), base_url and f"{base_url}/tiny/{rel}") for rel, d in FILES.items()
    )
    files += (
        ds.DataFile(
            "participants.csv", _sha(DERIVED), base_url and f"{base_url}/public/table.csv", ("C3", "A1")
        ),
    )
    tiny = ds.Dataset("tiny", "two tiny files", "none", files)
    monkeypatch.setattr(ds, "DATASETS", {"tiny": tiny})
    return tiny


@pytest.fixture
def http_mirror(mirror):
    """The mirror folder served over HTTP on the loopback address (no network needed)."""
    handler = functools.partial(_QuietHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002 - no request lines in the test output
        pass


def test_fetch_from_a_mirror_folder_checks_and_keeps_files(mirror, monkeypatch, tmp_path):
    _register(monkeypatch, None)
    seen = []
    out = ds.fetch(["tiny"], mirror=str(mirror), progress=lambda *a: seen.append(a))
    assert out == {"tiny": tmp_path / "cache" / "tiny"}
    for rel, data in FILES.items():
        assert (out["tiny"] / rel).read_bytes() == data
    assert {how for *_, how in seen} == {"mirror"} and len(seen) == 3
    assert ds.missing("tiny", tmp_path / "cache") == []
    seen.clear()
    ds.fetch(
        ["tiny"], mirror="file://" + str(mirror), progress=lambda *a: seen.append(a)
    )  # a file:// address
    assert {how for *_, how in seen} == {"cached"}
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_a_mirror_file_with_another_checksum_is_refused_and_not_kept(mirror, monkeypatch, tmp_path):
    _register(monkeypatch, None)
    (mirror / "tiny" / "one.bin").write_bytes(b"tampered")
    with pytest.raises(BrainaeError, match=r"one.bin: checksum .* is not the expected"):
        ds.fetch(["tiny"], mirror=str(mirror))
    assert not (tmp_path / "cache" / "tiny" / "one.bin").exists()
    assert ds.missing("tiny", tmp_path / "cache") == ["one.bin", "sub/two.bin", "participants.csv"]


def test_fetch_over_http_with_pooch(http_mirror, mirror, monkeypatch, tmp_path):
    _register(monkeypatch, None)
    monkeypatch.setenv("BRAINAE_DATA_URL", http_mirror)  # the mirror from the environment
    ds.fetch()
    for rel, data in FILES.items():
        assert (tmp_path / "cache" / "tiny" / rel).read_bytes() == data
    # a damaged download: pooch's checksum check refuses it and keeps nothing
    (mirror / "tiny" / "sub" / "two.bin").write_bytes(b"damaged")
    (tmp_path / "cache" / "tiny" / "sub" / "two.bin").unlink()
    with pytest.raises(BrainaeError, match="checksum does not match"):
        ds.fetch(["tiny"])
    assert not (tmp_path / "cache" / "tiny" / "sub" / "two.bin").exists()


def test_public_addresses_and_the_derived_table(http_mirror, monkeypatch, tmp_path):
    _register(monkeypatch, http_mirror)  # each file's own public address (here: the loopback server)
    ds.fetch(["tiny"])
    assert (tmp_path / "cache" / "tiny" / "participants.csv").read_bytes() == DERIVED
    assert (tmp_path / "cache" / "tiny" / "one.bin").read_bytes() == FILES["one.bin"]


def test_unreachable_source_and_mirror_only_files_are_one_line_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINAE_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("BRAINAE_DATA_URL", raising=False)
    _register(monkeypatch, "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(BrainaeError, match="could not download .*--mirror") as exc:
        ds.fetch(["tiny"])
    assert "\n" not in str(exc.value)
    _register(monkeypatch, None)
    with pytest.raises(BrainaeError, match="no public address.*--mirror"):
        ds.fetch(["tiny"])
    with pytest.raises(BrainaeError, match="no data set named 'nope'; valid names: tiny"):
        ds.fetch(["nope"])


def test_cli_fetch_and_list(mirror, monkeypatch, tmp_path):
    _register(monkeypatch, None)
    res = runner.invoke(app, ["fetch", "tiny", "--mirror", str(mirror), "--dir", str(tmp_path / "c2")])
    assert res.exit_code == 0, res.output
    assert f"tiny: 3 files (3 mirror) in {tmp_path / 'c2' / 'tiny'}" in res.output
    res = runner.invoke(app, ["fetch", "--list", "--dir", str(tmp_path / "c2")])
    assert res.exit_code == 0 and "tiny: two tiny files; none;" in res.output and "complete" in res.output
    (mirror / "tiny" / "one.bin").unlink()
    res = runner.invoke(app, ["fetch", "--mirror", str(mirror), "--dir", str(tmp_path / "c3")])
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and "one.bin: not in the mirror" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_the_real_registry_matches_the_shared_data(tmp_path):
    """Every checksum of DATASETS is that of the data the tests use (fetched from ../shared as a mirror)."""
    conftest.require_data("ixi-t1-2mm", "seed-weights")
    for name in ds.DATASETS:
        src = conftest.IXI_2MM.parent if name == "ixi-t1-2mm" else conftest.SEED_WEIGHTS.parent
        ds.fetch([name], home=tmp_path, mirror=str(src))
        assert ds.missing(name, tmp_path) == []
    assert len(ds.DATASETS["ixi-t1-2mm"].files) == 32 and len(ds.DATASETS["seed-weights"].files) == 8


def test_tests_without_data_skip_or_fail_when_data_is_required(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no-shared")
    monkeypatch.setenv("BRAINAE_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("BRAINAE_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="run `brainae fetch`"):
        conftest.require_data("ixi-t1-2mm")
    monkeypatch.setenv("BRAINAE_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="BRAINAE_REQUIRE_DATA=1"):
        conftest.require_data("seed-weights")
