"""How well the threshold brain-mask fallback agrees with deepbet on the 2 mm IXI sample (the figures that
``brainae.brainmask`` and the README quote).

For the first ``--n`` volumes of ``../shared/data/ixi-t1-2mm``: the Dice of the two masks, and, for the sagittal
slices that ``prepare`` slices, how many slices get the same keep decision at the brain-mask selection threshold
(brain pixels above 3000 / 65536 = 4.58 %). Needs deepbet (``pip install 'brainae[brainmask]'``; about 8 s per
volume on 2 CPU cores). Prints one JSON object.

    python benchmarks/brainmask_agreement.py [--n 30]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _common import DATA, cached_brain_mask
from brainae.brainmask import deepbet_available, threshold_mask
from brainae.io import load_volume
from brainae.scoring import dice
from brainae.select import DEFAULT_BRAIN_FRACTION
from brainae.volume import to_view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30, help="volumes of the 2 mm sample")
    args = ap.parse_args()
    if not deepbet_available():
        raise SystemExit("error: deepbet is not installed: pip install 'brainae[brainmask]'")
    dices, same, slices = [], 0, 0
    t = time.perf_counter()
    for f in sorted(DATA.glob("*.nii.gz"))[: args.n]:
        vol = load_volume(f)
        deep = cached_brain_mask(vol, method="deepbet")
        thr = threshold_mask(vol.data, vol.zooms)
        dices.append(dice(thr, deep))
        keep = [
            to_view(m, "sagittal").reshape(m.shape[0], -1).mean(axis=1) > DEFAULT_BRAIN_FRACTION
            for m in (thr, deep)
        ]
        same += int((keep[0] == keep[1]).sum())
        slices += len(keep[0])
    result = {
        "volumes": len(dices),
        "dice_mean": round(float(np.mean(dices)), 4),
        "dice_min": round(float(np.min(dices)), 4),
        "dice_max": round(float(np.max(dices)), 4),
        "same_keep_decision_slices": same,
        "sagittal_slices": slices,
        "seconds": round(time.perf_counter() - t, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
