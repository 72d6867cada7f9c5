"""The claims check of a study (lopt.studies.analysis) on hand-built seed curves.

Every expected verdict below is worked out by hand from the VERDICT_RULE: the standard
error of a seed mean is std(ddof=1) / sqrt(seeds), a pairwise difference is compared
with 2 x sqrt(sem_a^2 + sem_b^2), "reaches a loss first" compares the better method's
pessimistic band (loss + 2 sem, axis + 2 sem) with the other's optimistic band (both
- 2 sem). The inputs are exact, so there is no sampling noise: each case is placed so
that its margin is >= 10 % away from the decision boundary of the correct rule and on
the other side of the boundary a plausible slip would give (sem over sqrt(n - 1) or
not over sqrt(n) at all, one method's sem only, a signed distance, a band on the wrong
side, the means alone).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import REPO

from lopt.studies.analysis import check_claim, summarise
from lopt.studies.config import ClaimConfig, StudyConfig


def _study() -> StudyConfig:
    raw = yaml.safe_load((REPO / "configs" / "paper" / "pes_influence.yaml").read_text())
    raw["methods"] = raw["methods"][:2]  # pes, nres
    raw["seeds"] = 3
    raw["claims"] = []
    return StudyConfig.model_validate(raw)


def _curves(spec: dict[str, list[dict]]) -> pd.DataFrame:
    """``spec[method][seed]`` = {"loss": [...], "wall": [...], "theta": [...]} at outer steps 0, 10, 20."""
    rows = []
    for method, seeds in spec.items():
        for seed, s in enumerate(seeds):
            for i in range(3):
                rows.append({"method": method, "seed": seed, "outer_step": 10 * i, "unroll_steps": 1000 * i,
                             "wall_time": s.get("wall", [0.0, 1.0, 2.0])[i], "eval_loss": s["loss"][i],
                             "theta_0": s.get("theta", [0.5, 0.5, 0.5])[i]})
    return pd.DataFrame(rows)


def _finals(values: list[float], start: float = 1.0) -> list[dict]:
    return [{"loss": [start, (start + v) / 2, v]} for v in values]


def _verdict(claim: dict, curves: pd.DataFrame) -> str:
    return check_claim(ClaimConfig(text="c", **claim), curves, summarise(_study(), curves))[0]


LOWER = {"check": "lower_final", "better": "pes", "worse": ["nres"]}


def test_seed_sem_is_std_over_root_n():
    # 0.27, 0.28, 0.29: std(ddof=1) = 0.01, sem = 0.01 / sqrt(3) = 0.0057735
    curves = _curves({"pes": _finals([0.27, 0.28, 0.29]), "nres": _finals([0.3, 0.3, 0.3])})
    row = summarise(_study(), curves).set_index("method").loc["pes"]
    assert row["final_loss"] == pytest.approx(0.28, rel=1e-12)
    assert row["final_loss_sem"] == pytest.approx(0.01 / math.sqrt(3), rel=1e-9)


def test_lower_final_margin_is_two_combined_standard_errors():
    # both sems 0.0057735: combined 0.0081650, margin 0.016330. A difference of 0.018 is
    # beyond it (yes); with sem = std / sqrt(n - 1) the margin would be 0.0200 and with
    # sem = std it would be 0.0283 (both inconclusive).
    pes = [0.27, 0.28, 0.29]
    assert _verdict(LOWER, _curves({"pes": _finals(pes), "nres": _finals([v + 0.018 for v in pes])})) == "yes"
    assert _verdict(LOWER, _curves({"pes": _finals([v + 0.018 for v in pes]), "nres": _finals(pes)})) == "no"
    # 0.014 < 0.01633: inconclusive
    assert _verdict(LOWER, _curves({"pes": _finals(pes), "nres": _finals([v + 0.014 for v in pes])})) == "inconclusive"


def test_lower_final_counts_the_worse_methods_standard_error_too():
    # pes has no spread (sem 0); nres 0.25, 0.33, 0.41: sem 0.08 / sqrt(3) = 0.046188.
    # difference 0.05 < 2 x 0.046188 = 0.0924 -> inconclusive (pes's sem alone would say yes)
    curves = _curves({"pes": _finals([0.28, 0.28, 0.28]), "nres": _finals([0.25, 0.33, 0.41])})
    assert _verdict(LOWER, curves) == "inconclusive"
    # and symmetric: the better method's spread counts the same way
    curves = _curves({"pes": _finals([0.20, 0.28, 0.36]), "nres": _finals([0.33, 0.33, 0.33])})
    assert _verdict(LOWER, curves) == "inconclusive"


def test_reduces_loss_scales_the_start_sem_by_the_factor():
    # start 1, 2, 3 (mean 2, sem 0.57735), final 0.3 each (sem 0); factor 0.5:
    # 0.5 x 2 - 0.3 = 0.7 > 2 x hypot(0, 0.5 x 0.57735) = 0.577 -> yes
    # (unscaled start sem: margin 1.155 -> inconclusive)
    curves = _curves({m: [{"loss": [s, 0.5, 0.3]} for s in (1.0, 2.0, 3.0)] for m in ("pes", "nres")})
    assert _verdict({"check": "reduces_loss", "methods": ["pes"], "factor": 0.5}, curves) == "yes"
    # final 0.45: 0.55 < 0.577 -> inconclusive
    curves = _curves({m: [{"loss": [s, 0.5, 0.45]} for s in (1.0, 2.0, 3.0)] for m in ("pes", "nres")})
    assert _verdict({"check": "reduces_loss", "methods": ["pes"], "factor": 0.5}, curves) == "inconclusive"


def test_theta_near_is_a_distance_on_either_side_of_the_target():
    claim = {"check": "theta_near", "methods": ["pes"], "target": [-0.1667], "tol": 0.02}
    # overshooting far below the target is as far from it as stopping far above it
    for final in (-1.0, 0.6):
        thetas = [{"loss": [1.0, 0.5, 0.3], "theta": [0.5, 0.2, final + d]} for d in (-0.01, 0.0, 0.01)]
        curves = _curves({"pes": thetas, "nres": thetas})
        assert _verdict(claim, curves) == "no", final
    # within tol: |(-0.1667 + 0.005) - (-0.1667)| = 0.005, 0.015 > 2 x sem 0.001 / sqrt(3) -> yes
    thetas = [{"loss": [1.0, 0.5, 0.3], "theta": [0.5, 0.2, -0.1617 + d]} for d in (-0.001, 0.0, 0.001)]
    assert _verdict(claim, _curves({"pes": thetas, "nres": thetas})) == "yes"


REACH = {"check": "reaches_first", "better": "pes", "worse": ["nres"], "threshold": 0.7, "axis": "wall_time"}


def _reaching(walls: list[float], loss: float = 0.5) -> list[dict]:
    """Every seed at `loss` (< 0.7) from step 10 on, reached at wall-clock `walls[seed]`."""
    return [{"loss": [1.0, loss, loss], "wall": [0.0, w, 2 * w]} for w in walls]


def test_reaches_first_needs_the_bands_apart():
    # pes reaches 0.7 at wall 0.9, 1.0, 1.1: mean 1.0, sem 0.057735, band [0.8845, 1.1155];
    # nres at 1.1, 1.2, 1.3: band [1.0845, 1.3155]. Means 1.0 < 1.2, but pes's pessimistic
    # 1.1155 is not below nres's optimistic 1.0845 -> inconclusive (the means alone, or a
    # band with either edge on the wrong side of the mean, would say yes)
    pes = _reaching([0.9, 1.0, 1.1])
    assert _verdict(REACH, _curves({"pes": pes, "nres": _reaching([1.1, 1.2, 1.3])})) == "inconclusive"
    # nres at 1.4, 1.5, 1.6: optimistic 1.3845 > 1.1155 -> yes; roles swapped -> no
    assert _verdict(REACH, _curves({"pes": pes, "nres": _reaching([1.4, 1.5, 1.6])})) == "yes"
    assert _verdict(REACH, _curves({"pes": _reaching([1.4, 1.5, 1.6]), "nres": pes})) == "no"


def test_reaches_first_pessimistic_loss_band_waits_for_a_clear_crossing():
    # pes's step-10 losses 0.60, 0.65, 0.70: mean 0.65 <= 0.7 but mean + 2 sem = 0.7077 > 0.7,
    # so its pessimistic crossing is step 20 (wall 2.0, the same for every seed); nres
    # crosses clearly (0.5) at wall 1.4: pes is not ahead by the margin -> inconclusive
    # (a pessimistic band of mean - 2 sem would have pes reach at wall 1.0 -> yes)
    pes = [{"loss": [1.0, v, 0.3], "wall": [0.0, 1.0, 2.0]} for v in (0.60, 0.65, 0.70)]
    nres = [{"loss": [1.0, 0.5, 0.3], "wall": [0.0, 1.4, 2.8]} for _ in range(3)]
    assert _verdict(REACH, _curves({"pes": pes, "nres": nres})) == "inconclusive"
    # nres only at step 20 (wall 2.8): pes's pessimistic 2.0 < 2.8 -> yes
    nres = [{"loss": [1.0, 0.9, 0.3], "wall": [0.0, 1.4, 2.8]} for _ in range(3)]
    assert _verdict(REACH, _curves({"pes": pes, "nres": nres})) == "yes"
