"""Small SVG charts for the run report, written by hand so the report needs no plotting library
and opens offline.

Each function returns one `<svg>` element as a string, meant to be inlined in an HTML page (so
it carries no xmlns: HTML does not need it, and the page then holds no URL at all). Every piece
of text that reaches the SVG is escaped, and every number is formatted, because series names,
titles and labels come from run data. Points whose x or y is None, NaN or infinite are skipped;
a line is broken there rather than drawn across the gap, so a missing value never looks like a
measured one.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
# The yellow (#F0E442) is left out: it is unreadable as a thin line on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

# One colour per policy/method everywhere in the report, so a reader can follow "dpo" from the
# frontier to the training curves without reading legends.
METHOD_COLOURS = {
    "sft": "#000000",
    "ref": "#000000",
    "reference": "#000000",
    "ppo": "#0072B2",
    "dpo": "#D55E00",
    "bon": "#009E73",
    "grpo": "#CC79A7",
    "rloo": "#E69F00",
}

GRID = "#e3e3e3"
AXIS = "#555555"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
FONT_SIZE = 11
CHAR_W = 6.2  # average glyph width at FONT_SIZE, for layout without a text-measuring engine

Point = tuple[float | None, float | None]


def colour_for(name: str) -> str:
    """A stable colour for a policy name: known methods get fixed ones, others a hashed one.

    crc32 rather than hash(): Python salts str hashes per process, and the colours must be the
    same in every report. The method is taken from the name's first word so that "ppo-step40"
    or "dpo beta=0.1" keep their method's colour."""
    key = str(name).strip().lower()
    for sep in ("-", "_", " ", "/", "@", ":"):
        key = key.split(sep)[0]
    if key in METHOD_COLOURS:
        return METHOD_COLOURS[key]
    return PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


@dataclass
class Series:
    """A named set of (x, y) points; colour defaults to the palette in order of appearance."""

    name: str
    points: Sequence[Point]
    colour: str | None = None
    dashed: bool = False
    hollow: bool = False
    markers: bool = False
    tooltips: Sequence[str] | None = None  # one per point, shown on hover via <title>


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def finite(v: object) -> bool:
    """True for real numbers that can be plotted or printed as such (not None, NaN, inf, bool)."""
    if v is None or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _compact_exponent(text: str) -> str:
    """'1.5e-05' -> '1.5e-5': the padded exponent only costs width in narrow tick labels."""
    if "e" not in text:
        return text
    mantissa, exp = text.split("e")
    sign = "-" if exp.startswith("-") else ""
    return f"{mantissa}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"


def fmt_number(v: object, digits: int = 3) -> str:
    """A table-friendly rendering of a value: '—' when missing, thousands separators for
    integers, scientific notation only when fixed-point would hide the value or run long."""
    if not finite(v):
        if isinstance(v, float) and math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return "—"
    if isinstance(v, numbers.Integral) or (float(v).is_integer() and 1e3 <= abs(float(v)) < 1e12):
        return f"{int(v):,}"
    x = float(v)  # type: ignore[arg-type]
    a = abs(x)
    if a != 0 and (a >= 1e6 or a < 10 ** -digits):
        return _compact_exponent(f"{x:.{max(digits - 1, 1)}e}")
    decimals = digits if a < 10 else max(digits - 1, 1) if a < 100 else 1 if a < 1e4 else 0
    return f"{x:,.{decimals}f}"


def _decimals(step: float) -> int:
    """Decimal places needed to tell ticks `step` apart: 25 needs none, 2.5 one, 0.25 two."""
    if step <= 0 or not math.isfinite(step):
        return 0
    for d in range(16):
        scaled = step * 10**d
        if abs(scaled - round(scaled)) <= 1e-6 * scaled:
            return d
    return 16


def fmt_ticks(ticks: Sequence[float]) -> list[str]:
    """Short labels for one axis, in one style for the whole axis: k/M/G/T suffixes for large
    values, e-notation for tiny or astronomically large ones, and only as many decimals as
    the tick spacing needs (so 0.25 steps show two, 0.5 steps one)."""
    if not ticks:
        return []
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0]) or 1.0
    top = max(abs(t) for t in ticks)
    zero = step * 1e-6

    def scientific(t: float) -> str:
        # Each label gets only the mantissa digits it needs (5e-5, 1e-4, 1.5e-4): a shared
        # exponent would be tidier but needs an "x 1e-4" note that is easy to miss.
        e = math.floor(math.log10(abs(t)) + 1e-9)
        text = f"{t / 10**e:.{_decimals(step / 10**e)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return f"{text}e{e}"

    if top >= 1e15 or top < 1e-3:
        return ["0" if abs(t) < zero else scientific(t) for t in ticks]
    if top >= 1e4:
        scale, suffix = next((s, x) for s, x in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
                             if top >= s)
        d = _decimals(step / scale)
        return ["0" if abs(t) < zero else f"{t / scale:.{d}f}{suffix}" for t in ticks]
    d = _decimals(step)
    return ["0" if abs(t) < zero else f"{t:.{d}f}" for t in ticks]


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick positions (1, 2, 2.5, 5 times a power of ten) covering [lo, hi].

    A zero-width range (constant data or a single point) is widened first, so there is always
    an axis to draw and no division by zero when mapping values to pixels."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= max(abs(lo), abs(hi)) * 1e-9:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - start) / step - 1e-9)
    places = _decimals(step) + 3
    return [round(start + i * step, places) for i in range(max(count, 1) + 1)]


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def _text_width(text: str) -> float:
    return len(text) * CHAR_W


def _clean(points: Iterable[Point]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive plottable points; a bad point ends a run."""
    runs: list[list[tuple[float, float]]] = [[]]
    for p in points or ():
        try:
            x, y = p
        except (TypeError, ValueError):
            x = y = None
        if finite(x) and finite(y):
            runs[-1].append((float(x), float(y)))  # type: ignore[arg-type]
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _ticks_fitting(lo: float, hi: float, length: float, horizontal: bool) -> list[float]:
    """The densest nice ticks whose labels do not collide along an axis of `length` pixels."""
    for target in (7, 6, 5, 4, 3, 2):
        ticks = nice_ticks(lo, hi, target)
        labels = fmt_ticks(ticks)
        need = (max(_text_width(s) for s in labels) + 12) if horizontal else FONT_SIZE * 2.2
        if need * (len(ticks) - 1) <= length:
            return ticks
    return nice_ticks(lo, hi, 2)


@dataclass
class _Legend:
    name: str
    colour: str
    dashed: bool = False
    line: bool = True
    marker: str | None = None  # "filled" | "hollow"


class _Frame:
    """Pixel geometry of one chart: margins sized to the tick labels, the legend wrapped below
    the plot (never over the data), and the mapping from data to pixels."""

    def __init__(self, xs: list[float], ys: list[float], *, width: int, plot_height: int,
                 title: str, x_label: str, y_label: str, legend: list[_Legend]) -> None:
        self.empty = not xs
        self.width, self.title = width, title
        self.x_label, self.y_label, self.legend = x_label, y_label, legend
        x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        self.y_ticks = _ticks_fitting(y_lo, y_hi, plot_height, horizontal=False)
        self.y_labels = fmt_ticks(self.y_ticks)
        self.left = 14 + (FONT_SIZE + 6 if y_label else 0) + max(map(_text_width, self.y_labels))
        self.right = 16
        self.top = 28 if title else 12
        self.plot_w = width - self.left - self.right
        self.plot_h = plot_height
        self.x_ticks = _ticks_fitting(x_lo, x_hi, self.plot_w, horizontal=True)
        self.x_labels = fmt_ticks(self.x_ticks)
        self.legend_rows = self._layout_legend()
        self.height = (self.top + self.plot_h + 20 + (FONT_SIZE + 8 if x_label else 0)
                       + 18 * len(self.legend_rows) + 6)

    def _layout_legend(self) -> list[list[tuple[float, _Legend]]]:
        rows: list[list[tuple[float, _Legend]]] = []
        x = self.width  # forces a new row for the first item
        for item in self.legend:
            w = 26 + _text_width(item.name) + 14
            if x + w > self.width - self.right and (not rows or rows[-1]):
                rows.append([])
                x = self.left
            rows[-1].append((x, item))
            x += w
        return rows

    def px(self, x: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (x - lo) / (hi - lo) * self.plot_w

    def py(self, y: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.plot_h - (y - lo) / (hi - lo) * self.plot_h

    def open(self) -> list[str]:
        label = escape(self.title or "chart", quote=True)
        parts = [f'<svg class="chart" viewBox="0 0 {self.width} {self.height:.0f}" '
                 f'width="{self.width}" height="{self.height:.0f}" role="img" '
                 f'aria-label="{label}" font-family="{escape(FONT, quote=True)}" '
                 f'font-size="{FONT_SIZE}">']
        if self.title:
            parts.append(f'<text x="{self.left:.1f}" y="17" font-weight="600" font-size="12">'
                         f'{escape(self.title, quote=True)}</text>')
        return parts

    def axes(self) -> list[str]:
        parts = []
        bottom, right = self.top + self.plot_h, self.left + self.plot_w
        for t, s in zip(self.y_ticks, self.y_labels, strict=True):
            y = self.py(t)
            parts.append(f'<line x1="{self.left:.1f}" y1="{y:.1f}" x2="{right:.1f}" '
                         f'y2="{y:.1f}" stroke="{GRID}"/>')
            parts.append(f'<text x="{self.left - 5:.1f}" y="{y + 3.5:.1f}" text-anchor="end" '
                         f'fill="{AXIS}">{escape(s)}</text>')
        for t, s in zip(self.x_ticks, self.x_labels, strict=True):
            x = self.px(t)
            parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{bottom:.1f}" '
                         f'stroke="{GRID}"/>')
            parts.append(f'<text x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle" '
                         f'fill="{AXIS}">{escape(s)}</text>')
        parts.append(f'<rect x="{self.left:.1f}" y="{self.top}" width="{self.plot_w:.1f}" '
                     f'height="{self.plot_h}" fill="none" stroke="{AXIS}"/>')
        if self.x_label:
            parts.append(f'<text x="{self.left + self.plot_w / 2:.1f}" y="{bottom + 31:.1f}" '
                         f'text-anchor="middle" fill="{AXIS}">'
                         f'{escape(self.x_label, quote=True)}</text>')
        if self.y_label:
            cy = self.top + self.plot_h / 2
            parts.append(f'<text transform="translate({FONT_SIZE + 1},{cy:.1f}) rotate(-90)" '
                         f'text-anchor="middle" fill="{AXIS}">'
                         f'{escape(self.y_label, quote=True)}</text>')
        if self.empty:
            parts.append(f'<text x="{self.left + self.plot_w / 2:.1f}" '
                         f'y="{self.top + self.plot_h / 2:.1f}" text-anchor="middle" '
                         f'fill="{AXIS}" font-style="italic">no data</text>')
        return parts

    def legend_svg(self) -> list[str]:
        parts = []
        y0 = self.top + self.plot_h + 20 + (FONT_SIZE + 8 if self.x_label else 0) + 10
        for r, row in enumerate(self.legend_rows):
            y = y0 + 18 * r
            for x, item in row:
                if item.line:
                    parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 20:.1f}" '
                                 f'y2="{y:.1f}" {_stroke(item.colour, item.dashed)}/>')
                if item.marker:
                    parts.append(_marker(x + 10, y, item.colour, item.marker == "hollow"))
                parts.append(f'<text x="{x + 26:.1f}" y="{y + 4:.1f}">'
                             f'{escape(item.name, quote=True)}</text>')
        return parts


def _stroke(colour: str, dashed: bool, width: float = 1.8) -> str:
    dash = ' stroke-dasharray="5 3"' if dashed else ""
    return f'stroke="{colour}" stroke-width="{width}" fill="none"{dash}'


def _marker(x: float, y: float, colour: str, hollow: bool, r: float = 4.0,
            tooltip: str | None = None) -> str:
    fill = "#ffffff" if hollow else colour
    head = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" stroke="{colour}" '
            f'stroke-width="1.5"')
    if tooltip:
        return f"{head}><title>{escape(tooltip, quote=True)}</title></circle>"
    return f"{head}/>"


def _path(frame: _Frame, run: list[tuple[float, float]], colour: str, dashed: bool) -> str:
    d = " ".join(f"{'M' if i == 0 else 'L'}{frame.px(x):.1f},{frame.py(y):.1f}"
                 for i, (x, y) in enumerate(run))
    return f'<path d="{d}" {_stroke(colour, dashed)} stroke-linejoin="round"/>'


def _assign_colours(series: Sequence[Series]) -> list[str]:
    return [s.colour or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]


def _thin(run: list[tuple[float, float]], limit: int = 1500) -> list[tuple[float, float]]:
    """Every k-th point of a long run (keeping the last): a chart a few hundred pixels wide
    cannot show more, and the page stays small for runs with tens of thousands of steps."""
    if len(run) <= limit:
        return run
    k = math.ceil(len(run) / limit)
    return run[::k] + ([run[-1]] if (len(run) - 1) % k else [])


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------


def line_chart(series: Sequence[Series], *, title: str = "", x_label: str = "",
               y_label: str = "", width: int = 520, plot_height: int = 180) -> str:
    """Several named lines on shared axes; isolated points (a one-point series, or a point
    between two gaps) are drawn as dots so they do not vanish."""
    colours = _assign_colours(series)
    runs = [[_thin(r) for r in _clean(s.points)] for s in series]
    xs = [x for rs in runs for r in rs for x, _ in r]
    ys = [y for rs in runs for r in rs for _, y in r]
    legend = [_Legend(s.name, c, s.dashed, marker=("hollow" if s.hollow else "filled")
                      if s.markers else None)
              for s, c in zip(series, colours, strict=True)]
    frame = _Frame(xs, ys, width=width, plot_height=plot_height, title=title, x_label=x_label,
                   y_label=y_label, legend=legend)
    parts = frame.open() + frame.axes()
    for s, c, rs in zip(series, colours, runs, strict=True):
        for r in rs:
            if len(r) > 1:
                parts.append(_path(frame, r, c, s.dashed))
            if s.markers or len(r) == 1:
                parts += [_marker(frame.px(x), frame.py(y), c, s.hollow, r=2.5 if not s.markers
                                  else 3.0) for x, y in r]
    parts += frame.legend_svg()
    parts.append("</svg>")
    return "\n".join(parts)


def scatter_chart(series: Sequence[Series], curves: Sequence[Series] = (), *, title: str = "",
                  x_label: str = "", y_label: str = "", width: int = 720,
                  plot_height: int = 320, include_zero_x: bool = False) -> str:
    """Markers for measured points and lines for fitted curves.

    A curve named like a point series shares its legend entry (the swatch shows both), so a
    method's points and its fit read as one thing; other curves get entries of their own."""
    colours = _assign_colours(series)
    points = [_points_with_tips(s) for s in series]
    curve_runs = [_clean(c.points) for c in curves]
    xs = [x for ps in points for x, _, _ in ps] + [x for rs in curve_runs for r in rs
                                                   for x, _ in r]
    ys = [y for ps in points for _, y, _ in ps] + [y for rs in curve_runs for r in rs
                                                   for _, y in r]
    if include_zero_x and xs:
        xs.append(0.0)
    curve_names = {c.name for c in curves}
    legend: dict[str, _Legend] = {}
    for s, c in zip(series, colours, strict=True):
        legend.setdefault(s.name, _Legend(s.name, c, s.dashed, line=s.name in curve_names,
                                          marker="hollow" if s.hollow else "filled"))
    for c in curves:
        legend.setdefault(c.name, _Legend(c.name, c.colour or AXIS, c.dashed))
    frame = _Frame(xs, ys, width=width, plot_height=plot_height, title=title, x_label=x_label,
                   y_label=y_label, legend=list(legend.values()))
    parts = frame.open() + frame.axes()
    for c, rs in zip(curves, curve_runs, strict=True):
        parts += [_path(frame, r, c.colour or AXIS, c.dashed) for r in rs if len(r) > 1]
    for s, c, ps in zip(series, colours, points, strict=True):
        parts += [_marker(frame.px(x), frame.py(y), c, s.hollow, tooltip=tip)
                  for x, y, tip in ps]
    parts += frame.legend_svg()
    parts.append("</svg>")
    return "\n".join(parts)


def _points_with_tips(s: Series) -> list[tuple[float, float, str | None]]:
    tips = list(s.tooltips or ())
    out = []
    for i, p in enumerate(s.points or ()):
        try:
            x, y = p
        except (TypeError, ValueError):
            continue
        if finite(x) and finite(y):
            out.append((float(x), float(y), str(tips[i]) if i < len(tips) and tips[i] else None))
    return out


def reliability_diagram(bins: Sequence[dict], *, title: str = "Reliability",
                        width: int = 360, plot_height: int = 240) -> str:
    """Observed frequency against mean predicted probability per bin, with the diagonal a
    calibrated model would follow. Dot area follows the bin's count, so a far-off but nearly
    empty bin does not look as alarming as a populated one."""
    good = [b for b in bins or () if isinstance(b, dict) and finite(b.get("mean_prob"))
            and finite(b.get("frac_positive"))]
    counts = [float(b["count"]) for b in good if finite(b.get("count")) and b["count"] > 0]
    biggest = max(counts, default=1.0)
    colour = PALETTE[0]
    legend = [_Legend("perfect calibration", AXIS, dashed=True),
              _Legend("reward model", colour, marker="filled")]
    frame = _Frame([0.0, 1.0], [0.0, 1.0], width=width, plot_height=plot_height, title=title,
                   x_label="mean predicted probability", y_label="observed frequency",
                   legend=legend)
    frame.empty = not good
    parts = frame.open() + frame.axes()
    parts.append(f'<line x1="{frame.px(0):.1f}" y1="{frame.py(0):.1f}" x2="{frame.px(1):.1f}" '
                 f'y2="{frame.py(1):.1f}" {_stroke(AXIS, True, 1.2)}/>')
    pts = sorted((float(b["mean_prob"]), float(b["frac_positive"]), b) for b in good)
    pts = [(x, y, b) for x, y, b in pts if 0 <= x <= 1 and 0 <= y <= 1]
    if len(pts) > 1:
        parts.append(_path(frame, [(x, y) for x, y, _ in pts], colour, False))
    for x, y, b in pts:
        n = float(b["count"]) if finite(b.get("count")) and b["count"] > 0 else 0.0
        r = 2.5 + 4.5 * math.sqrt(n / biggest)
        tip = (f"bin {b.get('bin', '')}: {fmt_number(n)} pairs, predicted {fmt_number(x)}, "
               f"observed {fmt_number(y)}")
        parts.append(_marker(frame.px(x), frame.py(y), colour, False, r=r, tooltip=tip))
    parts += frame.legend_svg()
    parts.append("</svg>")
    return "\n".join(parts)
