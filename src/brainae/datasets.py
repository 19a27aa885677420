"""The public data that brainae's tests and benchmarks use, fetched into a cache folder with checksums.

Two data sets, each a folder of the cache (the same layout as the project's ``shared/data`` folder):

- ``ixi-t1-2mm``: 30 IXI T1 volumes (Hammersmith Hospital) downsampled to 2 mm and stored as bytes by the NiChart
  project (its public sample data), their ages and sexes (``participants.csv``, rows of NiChart's sample
  participants table) and the original IXI demographics sheet (``IXI.xls``). IXI data: CC BY-SA 3.0
  (brain-development.org/ixi-dataset).
- ``seed-weights``: the thesis's four trained Keras models (``.h5``, MIT licence, (c) 2020 Adrián
  Arnaiz-Rodríguez, github.com/AdrianArnaiz/Brain-MRI-Autoencoder) and, in ``reference/``, the outputs Keras
  gives for 8 slices (made by brainae's developers with TensorFlow to check the import; no public copy).

Every file has a SHA-256 checksum (of the copies the tests were written against); a download that does not
match is refused. Downloads use :mod:`pooch`. Where the files come from:

- ``BRAINAE_DATA`` (or ``home=``): the cache folder; default the user's cache folder
  (``pooch.os_cache("brainae")``, e.g. ``~/.cache/brainae`` on Linux).
- ``BRAINAE_DATA_URL`` (or ``mirror=``): a mirror laid out as ``<mirror>/<data set>/<file>``, an ``http(s)://``
  or ``file://`` address or a local folder. Without it, each file comes from its public address
  (:data:`DATASETS`); files with no public address (the Keras reference outputs) come only from a mirror.

Example:
    >>> from brainae.datasets import fetch
    >>> folders = fetch(["ixi-t1-2mm"], mirror="/data/brainae-mirror")  # doctest: +SKIP
    >>> sorted(folders["ixi-t1-2mm"].glob("*.nii.gz"))[:1]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from brainae.errors import BrainaeError

#: Public addresses. The NiChart and thesis repositories' paths were read from a public index of GitHub;
#: the thesis's files are pinned to the commits that index recorded. See docs/data.md for what was verified.
NICHART_T1 = "https://github.com/CBICA/NiChart_Project/raw/main/test_data/processed/IXI/t1/"
NICHART_PARTICIPANTS = (
    "https://github.com/CBICA/NiChart_Project/raw/7987a360d2ca45aba64b567bfb35334cf7e67742/"
    "test_data/processed/nichart_project/participants/participants.csv"
)
IXI_XLS = "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI.xls"
THESIS = "https://github.com/AdrianArnaiz/Brain-MRI-Autoencoder/raw/"
_MSE = "src/2.Experiments/results/Data_Aug/mse/"
_DSSIM = "src/2.Experiments/results/Data_Aug/dssim/"


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: its path inside the data set, checksum and public address (None: mirror only).

    ``rows``: the file is made from the downloaded table by keeping its header and the lines that start with
    these IDs, in this order (``participants.csv`` is a 30-row selection of NiChart's table).
    """

    path: str
    sha256: str
    url: str | None
    rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A named data set: its files, licence and a one-line description."""

    name: str
    description: str
    licence: str
    files: tuple[DataFile, ...]


_IXI_T1 = {
    "IXI132-HH-1415": "865905822e3a88c3f002dacf22f10b0f59c3f05d78374c9ee737b6336de1877d",
    "IXI162-HH-1548": "d2c4e748bf9b1a674ea63dc3fc724ebd5f089ff07459b87865a00ae0710db856",
    "IXI174-HH-1571": "866d1e9d2ce514d9a44477c386fcad0574b72973b38d4aa06ff4db0769ae8fa0",
    "IXI211-HH-1568": "48f4bdaa07cee97035ab0a83e8be1784cfebdf440cdcf4b84c896e868e6cfcf7",
    "IXI212-HH-1643": "91e5867f2e784f1163d1b7a9b43a698fd336c14050cebe3f47d1bf245dd42331",
    "IXI213-HH-1642": "a0d1f7694d8a7a4c5d50f0fe3ddefe30120606e5fc043def365495ba28c2215a",
    "IXI239-HH-2296": "545e88302035864776a0f6bfc4881ca3f782918711e5b1694b349d43036cddfa",
    "IXI252-HH-1693": "9baeb3a5ace04aabb428fcf699d46b8cbb7c524a5151a8244f041e6444b95cf5",
    "IXI255-HH-1882": "510a14602c0d80a1423ccd0b2a5e089a7755185c936ab34321bc2799a373f3c0",
    "IXI260-HH-1805": "688950a16adde154810edbad5da5c1f01cada50b554fbd5c9b1d9d1c735aa27b",
    "IXI274-HH-2294": "82dfde0390e77d3cfab09547359d6642981dd6c486ed896a6bb113837f219cd5",
    "IXI296-HH-1970": "bff55567986b3276eaef017d89569e203ac1d3970c8f48c0e0ecf7d98f8d206d",
    "IXI329-HH-1908": "aa736956ef4d299073f782a8517a60c1305fc0ddfef1d0d0fc9e976246bd3ab9",
    "IXI334-HH-1907": "8acd7ee71b9615b0e12146a52dcfae77881f9d7fd3731e69886d4d097b02bc9c",
    "IXI335-HH-1906": "51275e02539c429f6874b6385a98334401490947397d7dab97ac80b88c623223",
    "IXI353-HH-1996": "8e4716b6d91b12463e258661d317497bdb0b03c0284ca61036f43b02df19535a",
    "IXI357-HH-2076": "3cc0b001f5d7d567d37156438f02f4e20109272c92475f0f210e3c3c3833ed25",
    "IXI383-HH-2099": "eb4ee23cc67d34149d849e4cc826a2c02a45c9629b4b0dfc4a2fe9a0f62cb4ee",
    "IXI396-HH-2115": "c99731726a8e4295ca7d8bb569b31c18c15efbeb65fa10bea8a133d9bb33cd32",
    "IXI437-HH-2152": "b939b6690d68955986db71546bf30bb7be86265d1c769a2497bdeb1875b97040",
    "IXI443-HH-2215": "ceb63e02f3e231de63d4459de6e0b8e6ad195e9fa4748bcf6afd7262cbf68427",
    "IXI481-HH-2175": "e25cd44a5dbd8d88fe9267388d19c35a49629bc4cffa65def12f60bd808a61c2",
    "IXI508-HH-2268": "af5d12923d1c7127e54230c6e8636c1e9b9613511f64556ffb764a537ca9d676",
    "IXI516-HH-2297": "1f02d30da5502caa2bcf1659842df11537802a14e98624319463aed085e0f1e7",
    "IXI527-HH-2376": "91c43dbaf6fa8f2c7af6485a330fcd0756e93bafd8c874173534cfb2db54762e",
    "IXI546-HH-2450": "5d7377ee706dde020213577c5e298ab3d544d418e2f5fd597bf780773b5f6e4a",
    "IXI565-HH-2534": "9c74383fcd92d8e102b70ee5c3cca7b26b70c8e7727d8f53c77b1399dd064f60",
    "IXI577-HH-2661": "f6fd5d722812c522fddb9017d6322a8cf6995dd77c19b79704645e0da435c17e",
    "IXI603-HH-2701": "aa4719e8a167e3434596aac79f71861e43c51e18a3e373b5e167be54d9c489bd",
    "IXI606-HH-2601": "fa86586614e6a0434c31b28f4a12b2167a7d7f1dc728e45a31c9152b24a7afe3",
}
#: participants.csv's rows, in its order (NiChart's table, 30 of its subjects).
_PARTICIPANT_ROWS = (
    "IXI443-HH-2215 IXI577-HH-2661 IXI481-HH-2175 IXI606-HH-2601 IXI162-HH-1548 IXI546-HH-2450 IXI260-HH-1805 "
    "IXI516-HH-2297 IXI437-HH-2152 IXI239-HH-2296 IXI212-HH-1643 IXI508-HH-2268 IXI274-HH-2294 IXI329-HH-1908 "
    "IXI296-HH-1970 IXI396-HH-2115 IXI211-HH-1568 IXI335-HH-1906 IXI357-HH-2076 IXI383-HH-2099 IXI527-HH-2376 "
    "IXI353-HH-1996 IXI565-HH-2534 IXI334-HH-1907 IXI603-HH-2701 IXI255-HH-1882 IXI174-HH-1571 IXI213-HH-1642 "
    "IXI252-HH-1693 IXI132-HH-1415"
).split()

_KERAS = {  # file stem -> (folder in the thesis repository, commit, sha256 of the .h5, sha256 of the reference)
    "res_skip_cae_DSSIM_AUG_NoKReg_LRPlat": (
        _DSSIM + "res_skip_cae_DSSIM_AUG_NoKReg_LRPlat_T02_12_20__13_20/",
        "5714fb08a0154dc215fe205770f8113fe7fa9f4b",
        "6041f6cd8a91a03975edcb51739061561083fecbb8da219e958dd47feb552a28",
        "f28350ed1080161a8777a59ae400cb43c4903e37d17907e783350d69803f0234",
    ),
    "res_skip_cae_MSE_AUG_NoKReg_LRPlat": (
        _MSE + "res_skip_cae_MSE_AUG_NoKReg_LRPlat_T02_12_20__11_47/",
        "5714fb08a0154dc215fe205770f8113fe7fa9f4b",
        "16d8d367354b39ead8dbcc28a1d0bc620d3c735d96ab3d4fdc22d8c1470cbc75",
        "2a80347bebeed6cedfb1c9c1d56863027aaf26b77235e526ac6be185129e595a",
    ),
    "skip_con_cae_MSE_AUG_NoKReg_LRPlat": (
        _MSE + "skip_con_cae_MSE_AUG_NoKReg_LRPlat_T01_12_20__09_33/",
        "c965c4c31bc0e87a5abf33ce53dbd2f88fc26d7b",
        "68989697096bdcf5bc4a38d5a468552711059ff3c823e8c2357b183b23010df3",
        "298db4981cb7e4bc5afd824b29277609dfb860519c74e42663b30bbf6cda5711",
    ),
    "small_res_cae_MSE_full_pre_AUG_NoKReg_LRPlat": (
        _MSE + "small_res_cae_MSE_full_pre_AUG_NoKReg_LRPlat_T30_11_20__18_28/",
        "c965c4c31bc0e87a5abf33ce53dbd2f88fc26d7b",
        "34c14f660fea1207b1b2b435d023f50859b5230568d8b482a4eb29854ddd5b38",
        "2162af710e591d10ec9cf9941e10409108bd65180bcb5b8b5ef269e993571a4b",
    ),
}

DATASETS: dict[str, Dataset] = {
    "ixi-t1-2mm": Dataset(
        name="ixi-t1-2mm",
        description="30 IXI T1 volumes at 2 mm (NiChart's sample data), participants.csv and IXI.xls (17 MB)",
        licence="IXI dataset, CC BY-SA 3.0 (brain-development.org/ixi-dataset)",
        files=tuple(DataFile(f"{k}_T1.nii.gz", h, NICHART_T1 + f"{k}_T1.nii.gz") for k, h in _IXI_T1.items())
        + (
            DataFile(
                "participants.csv",
                "57e14b120be739df18c1c8d58013f21d76e83800039965b0a8637ea2bc267a5b",
                NICHART_PARTICIPANTS,
                rows=tuple(_PARTICIPANT_ROWS),
            ),
            DataFile("IXI.xls", "d7ce0b9e973117bf57f51c746ba45f039555bcc66cd208d27d77acdf80c2195f", IXI_XLS),
        ),
    ),
    "seed-weights": Dataset(
        name="seed-weights",
        description="the thesis's 4 Keras models (.h5) and their reference outputs (reference/*.npz) (20 MB)",
        licence="MIT, (c) 2020 Adrián Arnaiz-Rodríguez (github.com/AdrianArnaiz/Brain-MRI-Autoencoder)",
        files=tuple(DataFile(f"{k}.h5", v[2], f"{THESIS}{v[1]}/{v[0]}{k}.h5") for k, v in _KERAS.items())
        + tuple(DataFile(f"reference/{k}.npz", v[3], None) for k, v in _KERAS.items()),
    ),
}


def data_home(home: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``home``, else ``$BRAINAE_DATA``, else the user's cache folder for brainae."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("BRAINAE_DATA")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("brainae"))


def missing(name: str, root: str | os.PathLike) -> list[str]:
    """The files of data set ``name`` that are not in ``root/name`` (present means fully written: every file
    lands under its final name only once its checksum matched)."""
    folder = Path(root) / _dataset(name).name
    return [f.path for f in _dataset(name).files if not (folder / f.path).is_file()]


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise BrainaeError(f"no data set named {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local(mirror: str) -> Path | None:
    """The folder of a mirror given as a local path or a ``file://`` address (else None)."""
    parsed = urlparse(mirror)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https", "ftp", "sftp", "doi"):
        return None
    return Path(mirror).expanduser()


def _download(url: str, dest: Path, sha: str | None) -> None:
    """Download ``url`` to ``dest`` with pooch (checked against ``sha`` when given); errors in one line."""
    import pooch

    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{sha}" if sha else None,
            fname=dest.name,
            path=dest.parent,
            progressbar=False,
        )
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise BrainaeError(
                f"{url}: the downloaded file's checksum does not match the expected one (the source changed or "
                "the download was damaged); nothing was kept. Use a mirror that has the expected files "
                "(--mirror or BRAINAE_DATA_URL)"
            ) from None
        raise BrainaeError(f"{url}: {exc}") from None
    except Exception as exc:  # requests' connection errors, HTTP 404, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason if len(reason) <= 120 else type(exc).__name__  # requests' messages repeat the URL
        raise BrainaeError(
            f"could not download {url} ({reason}); check the network, or give a mirror folder or address "
            "(--mirror or BRAINAE_DATA_URL)"
        ) from None


def _select_rows(table: Path, rows: tuple[str, ...], dest: Path) -> None:
    """Write ``dest``: the header of ``table`` and its lines for ``rows`` (the first field), in that order, with
    CRLF line ends (as the copy the checksum was taken from)."""
    lines = table.read_text(encoding="utf-8").splitlines()
    by_id = {line.split(",", 1)[0]: line for line in lines[1:]}
    absent = [r for r in rows if r not in by_id]
    if absent:
        raise BrainaeError(f"{table.name}: no row for {', '.join(absent[:3])}; the source table changed")
    _atomic_write(dest, ("\r\n".join([lines[0], *(by_id[r] for r in rows)]) + "\r\n").encode())


def _atomic_write(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fetch_file(ds: Dataset, f: DataFile, folder: Path, mirror: str | None) -> str:
    """Put one file in place (checked); returns how: ``"cached"``, ``"mirror"`` or ``"downloaded"``."""
    dest = folder / f.path
    if dest.is_file() and sha256(dest) == f.sha256:
        return "cached"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        local = _local(mirror)
        if local is not None:
            src = local / ds.name / f.path
            if not src.is_file():
                raise BrainaeError(f"{src}: not in the mirror; the mirror must hold {ds.name}/{f.path}")
            _atomic_write_checked(src, dest, f.sha256)
        else:
            _download(mirror.rstrip("/") + f"/{ds.name}/{f.path}", dest, f.sha256)
        return "mirror"
    if f.url is None:
        raise BrainaeError(
            f"{ds.name}/{f.path} has no public address (made by brainae's developers); fetch it from a mirror "
            "that has it: brainae fetch --mirror DIR_OR_URL (or set BRAINAE_DATA_URL)"
        )
    if f.rows:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            table = Path(tmp) / "table.csv"
            _download(f.url, table, None)
            _select_rows(table, f.rows, dest)
        if sha256(dest) != f.sha256:
            dest.unlink()
            raise BrainaeError(
                f"{f.url}: the rows made from it do not match the expected {f.path} (the source changed); "
                "use a mirror (--mirror or BRAINAE_DATA_URL)"
            )
    else:
        _download(f.url, dest, f.sha256)
    return "downloaded"


def _atomic_write_checked(src: Path, dest: Path, sha: str) -> None:
    """Copy ``src`` to ``dest`` through a temporary file; refuse it when its checksum is not ``sha``."""
    got = sha256(src)
    if got != sha:
        raise BrainaeError(
            f"{src}: checksum {got[:12]}... is not the expected {sha[:12]}...; the mirror holds another version "
            "of this file (replace it with the published one)"
        )
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(
    names: Iterable[str] | None = None,
    *,
    home: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: Callable[[str, str, str], None] | None = None,
) -> dict[str, Path]:
    """Download data sets into the cache (files already there with the right checksum are kept).

    Args:
        names: data set names (:data:`DATASETS`); None: all of them.
        home: the cache folder (default :func:`data_home`).
        mirror: a mirror (``<mirror>/<data set>/<file>``): a local folder, ``file://``, ``http(s)://``
            address; default ``$BRAINAE_DATA_URL``; None there too: each file's public address.
        progress: called as ``progress(data set, file, how)`` after each file, ``how`` one of ``"cached"``,
            ``"mirror"`` or ``"downloaded"``.

    Returns:
        data set name -> its folder in the cache.

    Raises:
        BrainaeError: an unknown name, a failed download, a file whose checksum does not match (never kept).

    Example:
        >>> fetch(["seed-weights"], mirror="https://example.org/brainae-data")  # doctest: +SKIP
        {'seed-weights': PosixPath('/home/me/.cache/brainae/seed-weights')}
    """
    wanted = list(DATASETS) if names is None else list(dict.fromkeys(names))
    datasets = [_dataset(n) for n in wanted]
    root = data_home(home)
    mirror = mirror if mirror is not None else (os.environ.get("BRAINAE_DATA_URL") or None)
    out: dict[str, Path] = {}
    for ds in datasets:
        folder = root / ds.name
        folder.mkdir(parents=True, exist_ok=True)
        for f in ds.files:
            how = _fetch_file(ds, f, folder, mirror)
            if progress is not None:
                progress(ds.name, f.path, how)
        out[ds.name] = folder
    return out
