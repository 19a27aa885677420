"""Volume-level stratified split into train / val / test (thesis 5.3, without its slice-level leak).

Subjects, not slices, are assigned: all volumes of one subject land in the same split. Strata are the
combinations of sex, age group and ethnicity that are known; subjects without any metadata go to train
(as the thesis did), unless no subject has any: then all subjects are split at random (by subject), with a
warning that the split is not stratified. Within each stratum the subjects are shuffled with the seed, and the number sent to val
and test is apportioned across strata by largest remainder so that both the totals and each stratum's
proportions follow the requested fractions.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"subject_id": [f"s{i}" for i in range(20)], "sex": ["M", "F"] * 10,
    ...                   "age_group": ["adult"] * 20, "ethnicity": [None] * 20})
    >>> s = stratified_split(t, val=0.2, test=0.2, seed=0)
    >>> sorted(s.value_counts().items())
    [('test', 4), ('train', 12), ('val', 4)]
"""

from __future__ import annotations

import warnings

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning

STRATA = ("sex", "age_group", "ethnicity")


def _apportion(sizes: np.ndarray, frac: float, total: int) -> np.ndarray:
    """Integer counts per stratum summing to ``total``, proportional to ``sizes * frac`` (largest remainder)."""
    want = sizes * frac
    base = np.minimum(np.floor(want).astype(int), sizes)
    rest = total - int(base.sum())
    order = np.argsort(-(want - base), kind="stable")
    for i in order:
        if rest <= 0:
            break
        if base[i] < sizes[i]:
            base[i] += 1
            rest -= 1
    return base


def stratified_split(table, *, val: float = 0.14, test: float = 0.08, seed: int = 0):
    """Assign each row (a volume) to ``train``/``val``/``test``; returns a pandas Series aligned with ``table``.

    Args:
        table: DataFrame with ``subject_id`` and any of ``sex``, ``age_group``, ``ethnicity``.
        val, test: fractions of the subjects with metadata (thesis: 80/581 and 47/581 of all volumes).
        seed: shuffling seed; the same seed and table give the same split.
    """
    import pandas as pd

    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise BrainaeError(f"split fractions val={val}, test={test}: each in [0, 1) and together below 1")
    cols = [c for c in STRATA if c in table.columns]
    subjects = table.groupby("subject_id", sort=True).first()
    known = subjects[cols].notna().any(axis=1) if cols else pd.Series(False, index=subjects.index)
    strat = subjects[cols].astype(object).where(subjects[cols].notna(), "?").astype(str).agg("|".join, axis=1)
    rng = np.random.default_rng(seed)
    if len(subjects) and not known.any():
        warnings.warn(
            f"no subject has demographics (sex, age, ethnicity): the {len(subjects)} subjects are split at "
            "random by subject, not stratified; give --demographics for a stratified split",
            BrainaeWarning,
            stacklevel=2,
        )
        known = pd.Series(True, index=subjects.index)
    pool = subjects.index[known.to_numpy()]
    n = len(pool)
    n_test = int(round(test * n))
    n_val = int(round(val * n))
    if n >= 3:  # every split non-empty when there are enough subjects and a non-zero fraction
        n_test = max(n_test, 1 if test > 0 else 0)
        n_val = max(n_val, 1 if val > 0 else 0)
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)
    groups = {
        g: list(rng.permutation(sorted(pool[strat[pool].to_numpy() == g]))) for g in sorted(set(strat[pool]))
    }
    names = list(groups)
    sizes = np.array([len(groups[g]) for g in names])
    t_counts = _apportion(sizes, n_test / n if n else 0.0, n_test)
    v_counts = _apportion(sizes - t_counts, (n_val / (n - n_test)) if n - n_test else 0.0, n_val)
    assign = {s: "train" for s in subjects.index}
    for g, nt, nv in zip(names, t_counts, v_counts):
        members = groups[g]
        for s in members[:nt]:
            assign[s] = "test"
        for s in members[nt : nt + nv]:
            assign[s] = "val"
    return table["subject_id"].map(assign).rename("split")


def split_table(volumes):
    """Counts and fractions of each stratum value per split (the thesis's Fig 5.9 / Table 5.1 data)."""
    import pandas as pd

    rows = []
    for split in ("train", "val", "test", "all"):
        part = volumes if split == "all" else volumes[volumes["split"] == split]
        rows.append(
            {"split": split, "attribute": "volumes", "value": "all", "count": len(part), "fraction": 1.0}
        )
        if "n_kept" in part:
            rows.append(
                {
                    "split": split,
                    "attribute": "slices",
                    "value": "all",
                    "count": int(part["n_kept"].sum()),
                    "fraction": 1.0,
                }
            )
        for col in STRATA:
            if col not in part:
                continue
            counts = part[col].fillna("unknown").value_counts()
            for value, c in counts.items():
                rows.append(
                    {
                        "split": split,
                        "attribute": col,
                        "value": value,
                        "count": int(c),
                        "fraction": c / max(len(part), 1),
                    }
                )
    return pd.DataFrame(rows)
