"""One self-contained HTML page summarising a run: a pipeline's, or one stage's.

The page carries its CSS and its charts (inline SVG) and needs neither JavaScript nor network
access, so it can be attached to an issue, archived with the run, or opened on an offline
cluster node years later and still look the same.

Everything in `data` is untrusted text as far as the page is concerned: model responses in
particular are whatever the policy learned to write, and a reward-hacked policy can learn to
emit markup. So every string from `data` goes through `esc` (html.escape with quote=True),
and every number through `fmt_number`, never str() or repr().

    python tests/report_example.py OUT.html    # writes an example page (test data)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from tether.files import atomic_write_text
from tether.report.svg import (
    PALETTE,
    Series,
    colour_for,
    finite,
    fmt_number,
    line_chart,
    reliability_diagram,
    scatter_chart,
)

# Stages in pipeline order; any others follow in the order the data gives them.
STAGE_ORDER = ("sft", "rm", "ppo", "grpo", "rloo", "dpo", "kto", "bon", "eval")
STAGE_TITLES = {"sft": "Supervised fine-tuning", "rm": "Reward model", "ppo": "PPO",
                "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "kto": "KTO (thumbs up / down)",
                "bon": "Best-of-n", "eval": "Evaluation"}
FIT_FORMS = {"bon": "d(α − β·d)", "rl": "d(α − β·ln d)"}

CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d8dadd; --soft: #f5f6f8;
        --warn: #a33c00; --warn-bg: #fff3e6; --warn-line: #d55e00; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
             sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 28px 64px; }
h1 { font-size: 1.65rem; margin: 0 0 2px; line-height: 1.25; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 40px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02rem; margin: 22px 0 6px; }
p { margin: 6px 0 10px; }
.meta, .explain, caption, .muted { color: var(--muted); }
.explain { max-width: 85ch; }
ul.notes { margin: 8px 0 0; padding-left: 20px; color: var(--muted); }
nav { margin: 14px 0 0; font-size: 0.9rem; }
nav a { color: #0060a0; text-decoration: none; margin-right: 14px; white-space: nowrap; }
.warnings { margin: 20px 0; padding: 10px 18px 12px; background: var(--warn-bg);
            border: 2px solid var(--warn-line); border-left-width: 8px; border-radius: 6px; }
.warnings h2 { margin: 0 0 4px; border: none; padding: 0; color: var(--warn); }
.warnings ul { margin: 4px 0 0; padding-left: 20px; }
.warnings li { margin: 3px 0; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.9rem; }
caption { caption-side: bottom; text-align: left; font-size: 0.82rem; padding-top: 4px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line); }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.table-wrap { overflow-x: auto; max-width: 100%; }
td.num .ci { display: block; color: var(--muted); font-size: 0.82em; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
tr.baseline td { background: #fafbfc; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
.status { font-weight: 600; }
.status-done { color: #007a5a; } .status-failed { color: #b23c00; }
.status-skipped, .status-pending { color: var(--muted); }
.row { display: flex; flex-wrap: wrap; gap: 12px 48px; align-items: flex-start; }
.row > div { max-width: 520px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr));
          gap: 10px 24px; }
figure { margin: 6px 0; }
svg.chart { display: block; max-width: 100%; height: auto; }
.prompt, .response { white-space: pre-wrap; overflow-wrap: anywhere; }
.prompt { margin: 4px 0 8px; padding: 8px 12px; background: var(--soft);
          border-left: 3px solid var(--line); font-size: 0.92rem; }
table.samples { width: 100%; }
table.samples td.response { max-width: 0; width: 100%; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--muted); }
pre.config { background: var(--soft); padding: 12px 14px; overflow-x: auto;
             font-size: 0.82rem; line-height: 1.4; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.8rem; }
@media print {
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2, h3 { break-after: avoid; }
  figure, svg, tr, .warnings, .prompt { break-inside: avoid; }
  thead th, tr.baseline td, .prompt, pre.config { background: none; }
  .warnings { background: none; }
  pre.config { white-space: pre-wrap; }
  .table-wrap { overflow: visible; }
  table { font-size: 8.5pt; }
  th, td { padding: 3px 6px; }
}
"""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text from run data, made inert: it may be a model response containing markup."""
    return escape("" if value is None else str(value), quote=True)


def _ci(ci: Any, digits: int = 3) -> str | None:
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2 \
            and finite(ci[0]) and finite(ci[1]):
        return f"[{fmt_number(ci[0], digits)}, {fmt_number(ci[1], digits)}]"
    return None


def _value_ci(value: Any, ci: Any = None, digits: int = 3) -> str:
    """'0.620 [0.550, 0.690]' as HTML, the interval muted: the point estimate is what the eye
    should land on first."""
    text = esc(fmt_number(value, digits))
    interval = _ci(ci, digits) if finite(value) else None
    return f'{text} <span class="ci">{esc(interval)}</span>' if interval else text


def _num_cell(html_text: str) -> str:
    return f'<td class="num">{html_text}</td>'


def _duration(seconds: Any) -> str:
    if not finite(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60)):02d} min"


def _policy_cell(name: Any, extra: str = "") -> str:
    colour = colour_for(str(name))
    return (f'<td><span class="swatch" style="background:{colour}"></span>{esc(name)}'
            f"{extra}</td>")


def _section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{esc(heading)}</h2>\n{body}\n</section>'


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[str], cls: str = "",
           caption: str = "") -> str:
    """head: (label, numeric) pairs; rows: already-rendered <tr> strings."""
    ths = "".join(f'<th{" class=num" if num else ""} scope="col">{esc(label)}</th>'
                  for label, num in head)
    cap = f"<caption>{caption}</caption>" if caption else ""
    cls_attr = f' class="{cls}"' if cls else ""
    # The wrapper scrolls a wide table sideways on a narrow screen instead of letting it run
    # off the page.
    return (f'<div class="table-wrap"><table{cls_attr}>{cap}<thead><tr>{ths}</tr></thead>\n'
            "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _header(data: dict, anchors: list[tuple[str, str]]) -> str:
    parts = [f"<h1>{esc(data.get('title') or 'tether run')}</h1>"]
    if data.get("created"):
        parts.append(f'<div class="meta">Created {esc(data["created"])}</div>')
    notes = [n for n in _list(data.get("notes")) if n]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes)
                     + "</ul>")
    if len(anchors) > 1:
        parts.append("<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in anchors)
                     + "</nav>")
    return "<header>\n" + "\n".join(parts) + "\n</header>"


def _warnings(data: dict) -> str:
    items = [w for w in _list(data.get("warnings")) if w]
    if not items:
        return ""
    lis = "".join(f"<li>{esc(w)}</li>" for w in items)
    noun = "Warning" if len(items) == 1 else f"{len(items)} warnings"
    return (f'<section id="warnings" class="warnings" role="alert">\n<h2>{noun}</h2>\n'
            f"<ul>{lis}</ul>\n</section>")


def _summary(data: dict) -> str:
    rows_in = [r for r in _list(data.get("summary")) if isinstance(r, dict)]
    if not rows_in:
        return ""
    baseline = data.get("baseline")
    vs = f"vs {baseline}" if baseline else "vs baseline"
    head = [("Policy", False), ("Gold reward", True), ("Proxy reward", True),
            ("KL to reference", True), ("Length (tokens)", True), ("EOS rate", True),
            (f"Win {vs} (gold)", True), (f"Win {vs} (proxy)", True)]
    rows = []
    for r in rows_in:
        is_base = baseline is not None and r.get("policy") == baseline
        tag = ' <span class="muted">(baseline)</span>' if is_base else ""
        cells = [_policy_cell(r.get("policy", "?"), tag),
                 _num_cell(_value_ci(r.get("gold"), r.get("gold_ci"))),
                 _num_cell(_value_ci(r.get("proxy"), r.get("proxy_ci"))),
                 _num_cell(_value_ci(r.get("kl"), r.get("kl_ci"))),
                 _num_cell(esc(fmt_number(r.get("length")))),
                 _num_cell(esc(fmt_number(r.get("eos_rate")))),
                 _num_cell(_value_ci(r.get("win_gold"), r.get("win_gold_ci"))),
                 _num_cell(_value_ci(r.get("win_proxy"), r.get("win_proxy_ci")))]
        rows.append(f'<tr{" class=baseline" if is_base else ""}>{"".join(cells)}</tr>')
    against = esc(baseline or "the baseline")
    caption = ("Means over held-out prompts with 95% bootstrap intervals over prompts. "
               "Gold is the true objective, proxy the learned reward model the policies were "
               f"optimised against. Win rates pair each sample with {against}'s sample for the "
               "same prompt; ties count half. EOS rate: share of responses "
               "that ended on their own rather than at the length limit.")
    return _section("results", "Results on held-out prompts", _table(head, rows, caption=caption))


def _fit_curve(fit: dict, d_max: float, steps: int = 80) -> list[tuple[float, float]]:
    """The fitted reward as a function of d = sqrt(KL): the Gao et al. (2022) forms, with
    d·ln d taken as 0 at d = 0 (its limit) so the RL curve starts at the offset."""
    alpha, beta = fit.get("alpha"), fit.get("beta")
    offset = fit.get("offset") if finite(fit.get("offset")) else 0.0
    if not (finite(alpha) and finite(beta) and d_max > 0):
        return []
    out = []
    for i in range(steps + 1):
        d = d_max * i / steps
        if fit.get("form") == "rl":
            shape = d * (alpha - beta * math.log(d)) if d > 0 else 0.0
        else:
            shape = d * (alpha - beta * d)
        out.append((d, offset + shape))
    return out


def _frontier(data: dict) -> str:
    frontier = _dict(data.get("frontier"))
    points = [p for p in _list(frontier.get("points")) if isinstance(p, dict)]
    fits = [f for f in _list(frontier.get("fits")) if isinstance(f, dict)]
    if not points and not fits:
        return ""
    methods = list(dict.fromkeys(str(p.get("method", "?")) for p in points))
    methods += [m for m in dict.fromkeys(str(f.get("method", "?")) for f in fits)
                if m not in methods]

    def sqrt_kl(p: dict) -> float | None:
        # Sampled KL estimates can dip just below zero near the reference; that is KL = 0.
        return math.sqrt(max(float(p["kl"]), 0.0)) if finite(p.get("kl")) else None

    series, d_max = [], {}
    for m in methods:
        mine = [p for p in points if str(p.get("method", "?")) == m]
        ds = [sqrt_kl(p) for p in mine]
        d_max[m] = max((d for d in ds if d is not None), default=0.0)
        for reward, hollow in (("gold", False), ("proxy", True)):
            pts = [(d, p.get(reward)) for d, p in zip(ds, mine, strict=True)]
            tips = [f"{m} {p.get('label', '')}: KL {fmt_number(p.get('kl'))}, {reward} "
                    f"{fmt_number(p.get(reward))}" for p in mine]
            if any(finite(y) for _, y in pts):
                series.append(Series(f"{m} {reward}", pts, colour_for(m), dashed=hollow,
                                     hollow=hollow, tooltips=tips))
    curves = [Series(f"{f.get('method', '?')} {f.get('reward', 'gold')}",
                     _fit_curve(f, d_max.get(str(f.get("method", "?")), 0.0)),
                     colour_for(str(f.get("method", "?"))), dashed=f.get("reward") == "proxy")
              for f in fits]
    chart = scatter_chart(series, [c for c in curves if c.points], title="Reward vs KL",
                          x_label="√KL(policy ‖ reference)", y_label="mean reward",
                          include_zero_x=True, width=900, plot_height=340)
    explain = ("Each point is one policy (a training checkpoint, or best-of-n at some n) placed "
               "by the square root of its KL divergence from the reference; filled markers and "
               "solid lines are gold reward, hollow markers and dashed lines the proxy, and "
               "proxy rising while gold falls as KL grows is over-optimisation: the policy is "
               "exploiting the reward model rather than improving.")
    body = [f'<p class="explain">{explain}</p>', f"<figure>{chart}</figure>"]
    if fits:
        head = [("Method", False), ("Reward", False), ("Form: offset + …", False),
                ("α", True), ("β", True), ("Offset", True), ("R²", True)]
        rows = [f"<tr>{_policy_cell(f.get('method', '?'))}<td>{esc(f.get('reward'))}</td>"
                f"<td>{esc(FIT_FORMS.get(str(f.get('form')), f.get('form')))}</td>"
                + "".join(_num_cell(esc(fmt_number(f.get(k))))
                          for k in ("alpha", "beta", "offset", "r2")) + "</tr>"
                for f in fits]
        body.append(_table(head, rows, caption=(
            "Gao et al. (2022): reward = offset + form, d = √KL, fitted to the gain over each "
            "method's first point. β > 0: the gain bends over (over-optimisation ahead); "
            "β ≤ 0: still rising.")))
    return _section("frontier", "Reward vs KL", "\n".join(body))


def _length_bias_sentence(bias: dict) -> str:
    """One reading of the length correlations: what a policy optimised against this reward
    model is likely to learn about length. A claim needs its correlation beyond sampling
    noise, and the direction comes from the signs: two negative correlations, the proxy's the
    smaller in size, say the proxy dislikes length less than gold, not that it rewards it."""
    n = bias.get("n")
    if not (finite(n) and n > 3):
        return ""
    # Half-width of the 95% band of a correlation of n samples around 0 (Fisher z), floored
    # so that a huge sample does not make a negligible correlation a finding; a difference
    # of two correlations is given sqrt(2) times that (as if they were independent).
    band = max(0.1, 1.96 / math.sqrt(n - 3))
    rm, gold = bias.get("rm_length_pearson"), bias.get("gold_length_pearson")
    if finite(rm) and finite(gold):
        r = f"r = {fmt_number(rm, 2)} vs {fmt_number(gold, 2)} for gold"
        if abs(rm) <= band:
            return (f"The reward model's score shows no clear dependence on length ({r}; at "
                    f"n = {fmt_number(n)} anything within ±{fmt_number(band, 2)} of 0 may be "
                    "noise), so these correlations do not show a length bias either way.")
        direction = "longer" if rm > 0 else "shorter"
        # Beyond gold in the direction the reward model itself leans.
        if (rm - gold) * math.copysign(1, rm) > band * math.sqrt(2):
            if rm > 0:
                return (f"The reward model favours longer responses more than gold does ({r}), "
                        "so a policy can gain proxy reward just by writing more: check the "
                        "length column of the results table.")
            return (f"The reward model favours shorter responses more than gold does ({r}), so "
                    "optimising it is more likely to cut responses short than to pad them: "
                    "check the length column of the results table.")
        return (f"The reward model favours {direction} responses ({r}), but not clearly more "
                "than gold does, so length is not an obvious way to game it.")
    err = bias.get("err_pearson")
    if finite(err):
        if abs(err) <= band:
            return (f"Its errors show no clear dependence on length (r = {fmt_number(err, 2)}; "
                    f"at n = {fmt_number(n)} anything within ±{fmt_number(band, 2)} of 0 may "
                    "be noise).")
        direction = "longer" if err > 0 else "shorter"
        return (f"It overrates {direction} responses relative to gold (r = "
                f"{fmt_number(err, 2)} between its error and length): a policy optimised "
                f"against it may end up {direction} than gold would prefer.")
    return ""


def _reward_model(data: dict) -> str:
    rm = _dict(data.get("rm"))
    if not rm:
        return ""
    figures = [("Pairwise accuracy (held-out)", _value_ci(rm.get("accuracy"),
                                                          rm.get("accuracy_ci"))),
               ("Labels' own agreement with gold", esc(fmt_number(rm.get("label_agreement")))),
               ("Preference pairs", esc(fmt_number(rm.get("pairs")))),
               ("Expected calibration error", esc(fmt_number(rm.get("ece")))),
               ("Spearman(reward, gold)", esc(fmt_number(rm.get("spearman_gold"))))]
    rows = [f"<tr><th scope=row>{esc(k)}</th>{_num_cell(v)}</tr>" for k, v in figures
            if v != "—"]
    key_table = (f"<table><tbody>{''.join(rows)}</tbody><caption>The labels' agreement with "
                 "gold is the ceiling for accuracy: a reward model cannot beat its labels "
                 "except by luck.</caption></table>") if rows else ""
    reliability = [b for b in _list(rm.get("reliability")) if isinstance(b, dict)]
    diagram = (f"<figure>{reliability_diagram(reliability, title='Calibration')}</figure>"
               if reliability else "")
    body = [f'<div class="row"><div>{key_table}</div>{diagram}</div>']

    tables = []
    buckets = [b for b in _list(rm.get("by_length_diff")) if isinstance(b, dict)]
    if buckets:
        rows = [f"<tr><td>{esc(b.get('bucket'))}</td>"
                f"{_num_cell(esc(fmt_number(b.get('count'))))}"
                f"{_num_cell(esc(fmt_number(b.get('accuracy'))))}</tr>" for b in buckets]
        tables.append("<div><h3>Accuracy by length difference</h3>" + _table(
            [("Better − worse (tokens)", False), ("Pairs", True), ("Accuracy", True)], rows,
            caption="Accuracy rising with the difference means the model leans on length.")
            + "</div>")
    bias = _dict(rm.get("length_bias"))
    if bias:
        pairs = [("RM error vs length", bias.get("err_pearson"), bias.get("err_spearman")),
                 ("RM score vs length", bias.get("rm_length_pearson"), None),
                 ("Gold vs length", bias.get("gold_length_pearson"), None)]
        rows = [f"<tr><td>{esc(name)}</td>{_num_cell(esc(fmt_number(p)))}"
                f"{_num_cell(esc(fmt_number(s)))}</tr>" for name, p, s in pairs
                if finite(p) or finite(s)]
        n = f"n = {esc(fmt_number(bias.get('n')))} responses." if finite(bias.get("n")) else ""
        sentence = _length_bias_sentence(bias)
        tables.append("<div><h3>Length bias</h3>"
                      + (_table([("Correlation", False), ("Pearson", True),
                                 ("Spearman", True)], rows, caption=n) if rows else "")
                      + (f'<p class="explain">{esc(sentence)}</p>' if sentence else "")
                      + "</div>")
    if tables:
        body.append(f'<div class="row">{"".join(tables)}</div>')
    return _section("reward-model", "Reward model", "\n".join(body))


def _metric_group(name: str) -> str:
    """Which chart a metric goes on: quantities on a shared scale share a chart (losses, gold
    and proxy rewards, KLs, accuracies); anything else (clip fractions, entropies, DPO's
    implicit-reward margins) gets its own, since a shared axis would flatten the smaller one."""
    prefix, _, leaf = name.partition("/")
    leaf = leaf or prefix
    if "accuracy" in leaf:
        return "accuracy"
    if prefix in ("reward", "rewards", "eval") and leaf in ("gold", "proxy"):
        return "reward"
    if prefix == "kl" or (prefix == "eval" and leaf == "kl"):
        return "kl"
    if prefix == "loss" or (prefix == "eval" and leaf == "loss"):
        return "loss"
    return name


GROUP_TITLES = {"loss": "Losses", "reward": "Rewards (gold and proxy)", "kl": "KL",
                "accuracy": "Accuracy"}


def _stage_charts(metrics: dict) -> list[str]:
    groups: dict[str, list[str]] = {}
    for name in metrics:
        groups.setdefault(_metric_group(str(name)), []).append(name)
    charts = []
    for group, names in groups.items():
        # gold and proxy versions of a metric share a colour and differ in dash, as on the
        # frontier, so "reward/gold" vs "reward/proxy" reads at a glance.
        families: dict[str, str] = {}
        series = []
        for name in names:
            family = str(name).replace("proxy", "gold")
            colour = families.setdefault(family, PALETTE[len(families) % len(PALETTE)])
            points = _list(metrics[name])
            sparse = sum(1 for p in points if isinstance(p, list | tuple)) <= 25
            series.append(Series(str(name), points, colour, dashed="proxy" in str(name),
                                 hollow="proxy" in str(name), markers=sparse))
        title = GROUP_TITLES.get(group, group) if len(names) > 1 else str(names[0])
        charts.append(f"<figure>{line_chart(series, title=title, x_label='step')}</figure>")
    return charts


def _rounds(data: dict) -> str:
    """`tether run rounds=N`: per round, PPO's, DPO's (and KTO's) held-out gold and proxy at
    the end of their training, and the labels' and the reward model's agreement."""
    rounds = [r for r in _list(data.get("rounds")) if isinstance(r, dict)]
    if not rounds:
        return ""

    def value(row: dict, algo: str, key: str) -> Any:
        return _dict(row.get(algo)).get(key)

    algos = [a for a in ("ppo", "dpo", "kto") if any(r.get(a) for r in rounds)]
    series = [Series(f"{algo} {key}", [(r.get("round"), value(r, algo, key)) for r in rounds],
                     colour_for(algo), dashed=key == "proxy", hollow=key == "proxy",
                     markers=True)
              for algo in algos for key in ("gold", "proxy")
              if any(finite(value(r, algo, key)) for r in rounds)]
    quality = [Series(name, [(r.get("round"), r.get(key)) for r in rounds], markers=True)
               for name, key in (("labels vs gold", "label_agreement"),
                                 ("reward model vs labels", "rm_accuracy"))
               if any(finite(r.get(key)) for r in rounds)]
    charts = [line_chart(s, title=title, x_label="round") for s, title in
              ((series, "Held-out reward at the end of each round"),
               (quality, "Agreement per round")) if s]
    head = [("round", True), ("labels vs gold", True), ("reward model accuracy", True),
            *((f"{algo.upper()} {key}", True) for algo in algos
              for key in ("gold", "proxy", "KL"))]
    rows = ["<tr>" + "".join(_num_cell(esc(fmt_number(v))) for v in (
        r.get("round"), r.get("label_agreement"), r.get("rm_accuracy"),
        *(value(r, algo, key) for algo in algos for key in ("gold", "proxy", "kl"))))
        + "</tr>" for r in rounds]
    body = ['<div class="charts">' + "\n".join(f"<figure>{c}</figure>" for c in charts)
            + "</div>",
            _table(head, rows, caption="Each round's policies start from their previous "
                   "round's policy, which is also their reference: KL here is to that start, "
                   "not to SFT. The reward model of round r is trained on the labels of rounds "
                   "1..r.")]
    return _section("rounds", "Rounds", "\n".join(body))


def _curves(data: dict) -> str:
    curves = {k: v for k, v in _dict(data.get("curves")).items() if _dict(v)}
    if not curves:
        return ""
    order = [s for s in STAGE_ORDER if s in curves] + [s for s in curves if s not in STAGE_ORDER]
    body = []
    for stage in order:
        title = STAGE_TITLES.get(str(stage), str(stage))
        body.append(f"<h3>{esc(title)}</h3>")
        body.append('<div class="charts">' + "\n".join(_stage_charts(curves[stage])) + "</div>")
    return _section("curves", "Training curves", "\n".join(body))


def _response(text: Any) -> str:
    """A response as HTML. An empty (or whitespace-only) one is marked "(empty)", muted and
    in italics so it cannot pass for a response that says so: a blank cell reads as a
    rendering gap, while a policy collapsing to empty responses is a result to see."""
    if isinstance(text, str) and not text.strip():
        return '<span class="muted"><i>(empty)</i></span>'
    return esc(text)


def _samples(data: dict) -> str:
    prompts = [s for s in _list(data.get("samples")) if isinstance(s, dict)]
    if not prompts:
        return ""
    body = ['<p class="explain">Responses shown exactly as generated (whitespace kept), with '
            "the gold and proxy reward each received.</p>"]
    for i, sample in enumerate(prompts, 1):
        body.append(f"<h3>Prompt {i}</h3>")
        body.append(f'<div class="prompt">{esc(sample.get("prompt"))}</div>')
        rows = [f"<tr>{_policy_cell(r.get('policy', '?'))}"
                f'<td class="response">{_response(r.get("text"))}</td>'
                f"{_num_cell(esc(fmt_number(r.get('gold'))))}"
                f"{_num_cell(esc(fmt_number(r.get('proxy'))))}</tr>"
                for r in _list(sample.get("responses")) if isinstance(r, dict)]
        if rows:
            body.append(_table([("Policy", False), ("Response", False), ("Gold", True),
                                ("Proxy", True)], rows, cls="samples"))
    return _section("samples", "Sample responses", "\n".join(body))


def _stages(data: dict) -> str:
    stages = [s for s in _list(data.get("stages")) if isinstance(s, dict)]
    if not stages:
        return ""
    rows = []
    for s in stages:
        status = str(s.get("status") or "")
        cls = f"status status-{status}" if status in ("done", "skipped", "failed",
                                                      "pending") else "status"
        rows.append(f"<tr><td>{esc(s.get('name'))}</td><td class=\"{cls}\">{esc(status)}</td>"
                    f"{_num_cell(esc(_duration(s.get('seconds'))))}"
                    f"<td>{esc(s.get('summary'))}</td></tr>")
    timed = [float(s["seconds"]) for s in stages if finite(s.get("seconds"))]
    note = "" if len(timed) == len(stages) else f" ({len(timed)} of {len(stages)} timed)"
    rows.append(f'<tr class="total"><td>Total</td><td></td>'
                f"{_num_cell(esc(_duration(sum(timed)) if timed else '—'))}"
                f"<td>{esc(note.strip())}</td></tr>")
    head = [("Stage", False), ("Status", False), ("Time", True), ("Summary", False)]
    return _section("stages", "Stages", _table(head, rows))


def _metric_table(data: dict) -> str:
    """One row per metric of a stage's run: how often it was logged, first, last, min, max."""
    rows_in = [r for r in _list(data.get("metric_table")) if isinstance(r, dict)]
    if not rows_in:
        return ""
    rows = [f"<tr><td>{esc(r.get('name'))}</td>"
            + "".join(_num_cell(esc(fmt_number(r.get(k))))
                      for k in ("points", "last_step", "first", "last", "min", "max"))
            + "</tr>" for r in rows_in]
    head = [("Metric", False), ("Times logged", True), ("Last step", True), ("First", True),
            ("Last", True), ("Min", True), ("Max", True)]
    return _section("metrics", "Metrics", _table(head, rows))


def _config(data: dict) -> str:
    text = data.get("config_yaml")
    if not text:
        return ""
    return _section("config", "Configuration",
                    "<details><summary>Resolved configuration (YAML)</summary>"
                    f'<pre class="config">{esc(text)}</pre></details>')


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


def render(data: dict) -> str:
    """The whole report as one HTML page; every section but the title is optional."""
    data = _dict(data)
    sections = [("results", "Results", _summary(data)),
                ("frontier", "Reward vs KL", _frontier(data)),
                ("rounds", "Rounds", _rounds(data)),
                ("reward-model", "Reward model", _reward_model(data)),
                ("curves", "Training curves", _curves(data)),
                ("metrics", "Metrics", _metric_table(data)),
                ("samples", "Samples", _samples(data)),
                ("stages", "Stages", _stages(data)),
                ("config", "Configuration", _config(data))]
    present = [(a, t, html) for a, t, html in sections if html]
    nav = [(a, t) for a, t, _ in present]
    title = esc(data.get("title") or "tether run")
    body = "\n".join([_header(data, nav), _warnings(data)] + [h for _, _, h in present])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{body}\n<footer>Generated by tether.</footer>\n</main>\n</body>\n</html>\n")


def write_report(data: dict, path: str | os.PathLike) -> Path:
    """Write the page at once (tether.files), so a reader, or a browser left open on it,
    never sees half a file."""
    return atomic_write_text(path, render(data))
