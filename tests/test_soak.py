"""The soak's verdict (loadtest/soak.py): what counts as a trend. The load itself runs in ``make soak-smoke``."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "loadtest" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


soak = _soak()


def rows(series: dict[str, list[float]], step: float = 10.0) -> list[dict[str, float]]:
    n = len(next(iter(series.values())))
    return [{"t": i * step, **{name: values[i] for name, values in series.items()}} for i in range(n)]


def test_a_steady_climb_is_a_trend_even_when_small_per_sample() -> None:
    rss = [100 + 0.1 * i for i in range(90)]  # +0.1 MiB per sample: 7 % over the 72 samples after warm-up
    (trend,) = soak.verdict(rows({"rss_mib": rss}), warmup=180)
    assert not trend.ok
    assert trend.drift == pytest.approx(0.1 * 71, rel=1e-6)


def test_noise_around_a_plateau_and_a_fall_are_not_trends() -> None:
    rng = random.Random(14)
    flat = [48 + rng.uniform(-3, 3) for _ in range(90)]
    falling = [60 - 0.2 * i for i in range(90)]
    trends = soak.verdict(rows({"fds": flat, "connections": falling}), warmup=180)
    assert [t.ok for t in trends] == [True, True]


def test_a_windowed_count_may_wander_by_its_poisson_noise_but_not_grow() -> None:
    wander = [400.0 + (40 if 60 <= i < 80 else 0) for i in range(90)]  # +40 for a while: within 3 sqrt(400) = 60
    grow = [400.0 + 2 * i for i in range(90)]
    trends = {t.name: t for t in soak.verdict(rows({"acks_tracked": wander, "task_records": grow}), warmup=180)}
    ok, bad = trends["acks_tracked"], trends["task_records"]
    assert ok.limit == pytest.approx(3 * 20, rel=0.05)
    assert ok.ok
    assert not bad.ok


def test_too_few_samples_after_the_warm_up_is_refused() -> None:
    with pytest.raises(SystemExit, match="run longer"):
        soak.verdict(rows({"rss_mib": [1.0] * 10}), warmup=60)
