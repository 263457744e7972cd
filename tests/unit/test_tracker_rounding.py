"""The compiled tracker's shortcut for round(x, 6) and f"{x:.3f}" of an elapsed time (tracker._scaled_round:
x * 10**k rounded in floats, declined near a half) gives exactly what the standard library gives, wherever it
answers. The shortcut is taken only when compiled, so it is tested here directly (interpreted it is the same
arithmetic: IEEE doubles either way)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from lab.core import tracker
from lab.core.report import THREE_DIGITS

ELAPSED = st.floats(min_value=0.0, max_value=2.0 ** 21, allow_nan=False, allow_infinity=False)


@given(ELAPSED)
@example(0.0000005)
@example(1.0005)
@example(2.675)
@example(59.9995)
@example(1048575.9999995)
def test_six_decimals_are_rounds(x: float) -> None:
    n = tracker._scaled_round(x, 1e6)
    assert n == -1 or n / 1e6 == round(x, 6)


@given(ELAPSED)
@example(0.0005)
@example(1.0005)
@example(2.675)
@example(0.9995)
def test_three_decimals_are_format_3f(x: float) -> None:
    n = tracker._scaled_round(x, 1e3)
    assert n == -1 or f"{n // 1000}.{THREE_DIGITS[n % 1000]}" == f"{x:.3f}"


@given(ELAPSED)
def test_the_helpers_equal_the_standard_library(x: float) -> None:
    assert tracker._round6(x) == round(x, 6)
    assert tracker._fixed3(x) == f"{x:.3f}"
