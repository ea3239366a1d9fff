"""The run report: one self-contained HTML page (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.report.html import render, write_report

__all__ = ["render", "write_report"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m tether.report.html` does not find its own module already
    # imported by the package (runpy warns, and the module would exist twice).
    if name in __all__:
        from tether.report import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
