"""Demographics: IXI's own ``IXI.xls`` or a participants CSV/TSV, matched to volumes.

Both readers return one row per subject key with columns ``key`` (str), ``age`` (float, years), ``sex``
(``M``/``F``), ``ethnicity`` (``white``/``other``, or missing).

- ``IXI.xls`` (the real IXI sheet: 619 rows, duplicated ``IXI_ID`` rows, zeros and blanks for unknown
  values): ``SEX_ID`` 1 = M, 2 = F; ``ETHNIC_ID`` 1 = white, 2-6 = other, 0 = unknown; ``AGE`` in years.
  Duplicated IDs are merged: the first non-missing value of each field wins.
  The key is the IXI number (``IXI002-Guys-0828-T1.nii.gz`` -> 2).
- participants CSV/TSV (BIDS style): an ID column (``participant_id``, ``MRID``, ``subject``, ``subject_id``,
  ``id`` or ``IXI_ID``; case-insensitive), ``age``, ``sex`` (M/F, male/female, 1/2), optional
  ``ethnicity``/``ethnic``/``ETHNIC_ID``. IDs match a volume by its file name without extension, its subject
  (``IXI002-Guys-0828``, ``sub-01``) or, for IXI names, the IXI number.

Age groups follow the thesis: ``young`` [0, 25), ``adult`` [25, 65), ``elderly`` [65, inf).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning
from brainae.io import ixi_number, subject_id, volume_id

AGE_GROUPS = (("young", 0.0, 25.0), ("adult", 25.0, 65.0), ("elderly", 65.0, float("inf")))
ID_COLUMNS = ("participant_id", "mrid", "subject_id", "subject", "id", "ixi_id")


def age_group(age: float | None) -> str | None:
    """Thesis age group of an age in years (None for unknown)."""
    if age is None or not np.isfinite(age):
        return None
    for name, lo, hi in AGE_GROUPS:
        if lo <= age < hi:
            return name
    return None


def _sex(value) -> str | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    s = str(value).strip().lower()
    return {"m": "M", "male": "M", "1": "M", "1.0": "M", "f": "F", "female": "F", "2": "F", "2.0": "F"}.get(s)


def _ethnicity(value) -> str | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    s = str(value).strip().lower()
    if s in ("", "0", "0.0", "nan", "unknown", "n/a"):
        return None
    if s in ("1", "1.0", "white", "w"):
        return "white"
    return "other"


MAX_AGE = 120.0
"""Ages above this (years) are taken for data-entry errors and treated as unknown, with a warning."""

_BLANK = ("", "nan", "n/a", "na", "none", "null", "-", "?")


def _age(value) -> float | None:
    a = _age_checked(value)
    return a if isinstance(a, float) else None


def _age_checked(value) -> float | None | str:
    """The age in years; None when unknown (blank, or 0 as IXI.xls writes it); a reason string when invalid."""
    if value is None or str(value).strip().lower() in _BLANK:
        return None
    try:
        a = float(value)
    except (TypeError, ValueError):
        return f"not a number ({str(value).strip()[:20]!r})"
    if not np.isfinite(a):
        return f"not finite ({value!r})"
    if a < 0:
        return f"negative ({a:g})"
    if a > MAX_AGE:
        return f"above {MAX_AGE:g} years ({a:g})"
    return a if a > 0 else None


def _warn_unknown(path: str | os.PathLike, what: str, items: list[str], sep: str, fix: str) -> None:
    """One warning for the reader's caller: ``len(items)`` ``what``, treated as unknown (the first five named)."""
    warnings.warn(
        f"{path}: {len(items)} {what}, treated as unknown: "
        + sep.join(items[:5])
        + (" ..." if len(items) > 5 else "")
        + f"; {fix}",
        BrainaeWarning,
        stacklevel=4,  # this function, the check, the reader: the warning names the reader's caller
    )


def _ages(keys, values, path) -> list[float | None]:
    """Ages of a column, with one warning naming the IDs whose age is invalid (they count as unknown)."""
    out: list[float | None] = []
    bad: list[str] = []
    for key, v in zip(keys, values, strict=True):
        a = _age_checked(v)
        if isinstance(a, str):
            bad.append(f"{key}: {a}")
            out.append(None)
        else:
            out.append(a)
    if bad:
        _warn_unknown(path, "invalid age(s)", bad, "; ", "fix them in the table")
    return out


def read_ixi_xls(path: str | os.PathLike):
    """Read IXI's ``IXI.xls`` into the common table (see module doc)."""
    import pandas as pd

    path = Path(path)
    try:
        import xlrd

        book = xlrd.open_workbook(str(path))
        sheet = book.sheet_by_index(0)
        header = [str(c).strip() for c in sheet.row_values(0)]
        rows = [sheet.row_values(i) for i in range(1, sheet.nrows)]
        raw = pd.DataFrame(rows, columns=header)
    except Exception as exc:
        raise BrainaeError(
            f"{path}: cannot be read as an Excel .xls sheet ({type(exc).__name__}); "
            "give IXI's IXI.xls or a participants .csv/.tsv"
        ) from None
    cols = {c.upper().split(" ")[0]: c for c in raw.columns}
    if "IXI_ID" not in cols:
        raise BrainaeError(f"{path}: no IXI_ID column; this does not look like IXI.xls")
    keys = [_ixi_key(v) for v in raw[cols["IXI_ID"]]]
    out = pd.DataFrame(
        {
            "key": keys,
            "age": _ages(keys, raw[cols["AGE"]], path) if "AGE" in cols else None,
            "sex": [_sex(v) for v in raw[cols["SEX_ID"]]] if "SEX_ID" in cols else None,
            "ethnicity": [_ethnicity(v) for v in raw[cols["ETHNIC_ID"]]] if "ETHNIC_ID" in cols else None,
        }
    )
    return _merge_duplicates(out.dropna(subset=["key"]), path)


def _ixi_key(v) -> str | None:
    text = str(v).strip()
    if text in ("", "nan"):
        return None
    try:
        return str(int(float(text)))
    except (ValueError, OverflowError):
        return text


def read_participants(path: str | os.PathLike):
    """Read a participants CSV/TSV into the common table (see module doc)."""
    import pandas as pd

    path = Path(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    try:
        raw = pd.read_csv(path, sep=sep, engine="python", dtype=str)
    except Exception as exc:
        raise BrainaeError(
            f"{path}: cannot be read as CSV/TSV ({type(exc).__name__}); give a table with an ID column, age and sex"
        ) from None
    lower = {c.strip().lower(): c for c in raw.columns}
    idcol = next((lower[c] for c in ID_COLUMNS if c in lower), None)
    if idcol is None:
        raise BrainaeError(
            f"{path}: no ID column (expected one of {', '.join(ID_COLUMNS)}); rename the subject column"
        )

    def col(*names):
        c = next((lower[n] for n in names if n in lower), None)
        return raw[c] if c is not None else [None] * len(raw)

    keys = list(raw[idcol].astype(str).str.strip())
    out = pd.DataFrame(
        {
            "key": keys,
            "age": _ages(keys, col("age", "age_years"), path),
            "sex": [_sex(v) for v in col("sex", "gender", "sex_id")],
            "ethnicity": [_ethnicity(v) for v in col("ethnicity", "ethnic", "ethnic_id", "race")],
        }
    )
    return _merge_duplicates(out, path)


def _merge_duplicates(table, path: str | os.PathLike = "demographics"):
    """One row per ID: duplicated rows are merged (first known value per column); rows of one ID that
    disagree (ages more than a year apart, different sex or ethnicity) are reported with their IDs, and that
    ID's demographics are treated as unknown, since the stratification cannot trust them."""
    merged = table.groupby("key", sort=False, as_index=False).agg(
        {"age": "first", "sex": "first", "ethnicity": "first"}
    )
    dup = table[table["key"].duplicated(keep=False)]
    conflicts: list[str] = []
    for key, rows in dup.groupby("key", sort=False):
        ages = rows["age"].dropna().astype(float)
        what = []
        if len(ages) and float(ages.max() - ages.min()) > 1.0:
            what.append("age")
        for c in ("sex", "ethnicity"):
            if rows[c].dropna().nunique() > 1:
                what.append(c)
        if what:
            conflicts.append(f"{key} ({', '.join(what)})")
            merged.loc[merged["key"] == key, ["age", "sex", "ethnicity"]] = None
    if conflicts:
        _warn_unknown(
            path, "ID(s) have duplicated rows that disagree", conflicts, ", ", "keep one row per ID"
        )
    return merged


def read_demographics(path: str | os.PathLike):
    """Read ``IXI.xls`` or a participants CSV/TSV (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise BrainaeError(f"{path}: no such demographics file; give IXI.xls or a participants .csv/.tsv")
    if path.suffix.lower() in (".xls", ".xlsx"):
        return read_ixi_xls(path)
    return read_participants(path)


def match_demographics(files: list[Path], table, source: str | os.PathLike):
    """One row per file with ``age``, ``sex``, ``ethnicity``, ``age_group`` (missing where not found).

    Raises:
        BrainaeError: when not a single volume matches an ID of the table.
    """
    import pandas as pd

    lookup = {str(k): i for i, k in enumerate(table["key"])}
    rows = []
    for f in files:
        candidates = [volume_id(f), subject_id(f)]
        num = ixi_number(f)
        if num is not None:
            candidates += [str(num), f"IXI{num:03d}", f"IXI{num}"]
        hit = next((lookup[c] for c in candidates if c in lookup), None)
        if hit is None:
            rows.append({"age": None, "sex": None, "ethnicity": None})
        else:
            r = table.iloc[hit]
            rows.append({"age": r["age"], "sex": r["sex"], "ethnicity": r["ethnicity"]})
    out = pd.DataFrame(rows)
    if len(files) and out[["age", "sex"]].isna().all(axis=None):
        example = volume_id(files[0])
        raise BrainaeError(
            f"{source}: none of its IDs matches a volume (e.g. {example!r}); the ID column must hold the file "
            "names, subject IDs (IXI002-Guys-0828, sub-01) or IXI numbers"
        )
    out["age"] = pd.to_numeric(out["age"], errors="coerce")
    out["age_group"] = [age_group(a) for a in out["age"]]
    return out
