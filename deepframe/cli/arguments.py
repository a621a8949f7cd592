"""The value types of the command's options, and the lists their help names.

Each type is a function ``str -> value`` that argparse calls before any heavy
import; a bad value is an immediate ``argument --x: ...`` error. Standard
library only (PyTorch is not imported by ``deepframe --help``).
"""

from __future__ import annotations

import argparse
import math

__all__ = ["DATASET_EPS"]

#: The data sets of ``deepframe.data.DATASETS`` (listed here so that ``--help`` does not
#: import torch; a test checks both lists agree) with their default attack radius.
DATASET_EPS = {"digits": "0.1", "synthetic": "0.04", "cifar10": "8/255"}


def _integer(minimum: int):
    """The type of an integer option ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(*, minimum: float = 0.0, strict: bool = False, below: float | None = None):
    """The type of a finite number ``>= minimum`` (``>`` if ``strict``), ``< below`` if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value > minimum if strict else value >= minimum
        high_ok = below is None or value < below
        if not math.isfinite(value) or not low_ok or not high_ok:
            rel = ">" if strict else ">="
            bound = f" and < {below}" if below is not None else ""
            raise argparse.ArgumentTypeError(
                f"must be a finite number {rel} {minimum:g}{bound}, got {text!r}"
            )
        return value

    return parse


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _alpha(text: str) -> float | str:
    """The extrapolation ``alpha``: ``"fista"`` or a number in ``[0, 1)``."""
    if text == "fista":
        return text
    try:
        return _real(minimum=0.0, below=1.0)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"'fista' or a number in [0, 1): {exc}") from None


def _beta(text: str) -> float | str:
    """The step size factor ``beta``: ``"learned"`` or a number in ``(0, 1]``."""
    if text == "learned":
        return text
    value = _real(minimum=0.0, strict=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"'learned' or a number in (0, 1], got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    """An input shape: ``"3x32x32"`` (also ``"3,32,32"``) or a vector size ``"64"``."""
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(
            f"expected C x H x W (e.g. 3x32x32) or a vector size d, got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _size(text: str) -> int:
    """A memory size in bytes: ``"16G"``, ``"512M"``, ``"1000"``."""
    from .._io import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _eps_text(text: str) -> str:
    """An eps list (``8/255,0.1``): syntax checked here, values again by the library."""
    from fractions import Fraction

    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated eps values, got {text!r}")
    for item in items:
        try:
            value = float(Fraction(item))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"cannot read eps {item!r}: use a number or a fraction like 8/255"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"eps must be finite and >= 0, got {item!r}")
    return ",".join(items)


def _eps_ladder(text: str) -> str:
    """``"8/255"`` -> ``"1/255,2/255,4/255,8/255"``: eps/8, eps/4, eps/2, eps."""
    from fractions import Fraction

    num, slash, den = text.partition("/")
    out = []
    for k in (8, 4, 2, 1):
        part = Fraction(num) / k
        if slash and part.denominator == 1:
            out.append(f"{part.numerator}/{den}")
        elif slash:  # e.g. 3/255 / 8 = 3/2040: exact, not a rounded decimal
            value = Fraction(num) / (Fraction(den) * k)
            out.append(f"{value.numerator}/{value.denominator}")
        else:
            out.append(repr(float(Fraction(text)) / k))
    return ",".join(out)
