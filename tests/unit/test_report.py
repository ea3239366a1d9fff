from __future__ import annotations

import copy
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest
from report_example import example_data, main

from tether.errors import UserError
from tether.report import render, write_report
from tether.report.html import _length_bias_sentence, _metric_group
from tether.report.svg import (
    Series,
    fmt_number,
    fmt_ticks,
    line_chart,
    nice_ticks,
    reliability_diagram,
    scatter_chart,
)

EVIL = '<script>alert(1)</script> "quotes" & <b>'
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &quot;quotes&quot; &amp; &lt;b&gt;"
HEADINGS = ["Results on held-out prompts", "Reward vs KL", "Reward model", "Training curves",
            "Sample responses", "Stages", "Configuration"]


def svg_blocks(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def assert_svg_ok(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "svg"
    return root


def evil_data() -> dict:
    data = example_data()
    data["title"] = EVIL
    data["created"] = EVIL
    data["notes"] = [EVIL]
    data["config_yaml"] = EVIL
    data["warnings"] = [EVIL]
    data["baseline"] = EVIL
    data["summary"][0]["policy"] = EVIL
    data["stages"][0].update(name=EVIL, status=EVIL, summary=EVIL)
    data["samples"][0]["prompt"] = EVIL
    data["samples"][0]["responses"][0].update(policy=EVIL, text=EVIL, gold=EVIL)
    data["frontier"]["points"][0].update(method=EVIL, label=EVIL)
    data["frontier"]["fits"][0].update(method=EVIL, reward=EVIL, form=EVIL)
    data["curves"][EVIL] = {EVIL: [[0, 1.0], [1, 2.0]]}
    data["rm"]["reliability"][0]["bin"] = EVIL
    data["rm"]["by_length_diff"][0]["bucket"] = EVIL
    return data


def test_text_from_data_is_escaped_everywhere():
    page = render(evil_data())
    assert "<script" not in page
    assert "<b>" not in page
    assert EVIL_ESCAPED in page
    # Each place the text went: title, header, warning, table cells, pre, SVG text/tooltip.
    assert page.count(EVIL_ESCAPED) >= 10
    for svg in svg_blocks(page):
        assert_svg_ok(svg)


def test_page_is_self_contained():
    page = render(example_data())
    for needle in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
        assert needle not in page.lower()


def test_full_page_has_every_section_in_order():
    page = render(example_data())
    positions = [page.index(f"<h2>{h}</h2>") for h in HEADINGS]
    assert positions == sorted(positions)
    assert page.index('class="warnings"') < positions[0]
    assert "0.700 <span class=\"ci\">[0.660, 0.740]</span>" in page
    blocks = svg_blocks(page)
    assert len(blocks) >= 10  # frontier, reliability and the training-curve small multiples
    for svg in blocks:
        assert_svg_ok(svg)


def test_minimal_page_renders():
    page = render({"title": "just a title"})
    assert "<title>just a title</title>" in page
    assert "<h2>" not in page
    assert 'class="warnings"' not in page


@pytest.mark.parametrize("empty", [None, [], {}])
def test_empty_sections_are_omitted(empty):
    data = {"title": "t", "summary": empty, "frontier": empty, "rm": empty, "curves": empty,
            "samples": empty, "stages": empty, "warnings": empty, "config_yaml": empty}
    assert "<h2>" not in render(data)


def test_missing_dpo_and_none_values_render():
    data = example_data()
    data["summary"] = [r for r in data["summary"] if r["policy"] != "dpo"]
    for row in data["summary"]:
        for key in list(row):
            if key != "policy":
                row[key] = None
    del data["curves"]["dpo"]
    data["frontier"]["points"] = [p for p in data["frontier"]["points"] if p["method"] != "dpo"]
    data["frontier"]["points"][0].update(kl=None, proxy=None)
    data["frontier"]["fits"][0].update(alpha=None)
    data["stages"][0]["seconds"] = None
    data["rm"] = {"accuracy": 0.7, "accuracy_ci": None, "reliability": None,
                  "length_bias": {"n": None}}
    data["curves"]["ppo"]["kl/seq"] = []
    data["curves"]["ppo"]["reward/gold"][5] = [6, None]
    data["curves"]["ppo"]["reward/proxy"][5] = [6, float("nan")]
    page = render(data)
    assert "DPO" not in page
    assert "None" not in page and "nan" not in page.lower().replace("nats", "")
    assert "(4 of 6 timed)" in page
    for svg in svg_blocks(page):
        assert_svg_ok(svg)


def test_numbers_are_formatted_not_repr():
    data = {"title": "t", "summary": [{"policy": "p", "gold": 0.123456789, "kl": 12345678.9,
                                       "length": float("inf"), "eos_rate": "not a number"}]}
    page = render(data)
    assert "0.123456789" not in page and "0.123" in page
    assert "1.23e7" in page
    assert "not a number" not in page


@pytest.mark.parametrize("series", [
    [],
    [Series("empty", [])],
    [Series("one", [(3, 4)])],
    [Series("flat", [(0, 2.0), (1, 2.0), (2, 2.0)])],
    [Series("zeros", [(0, 0.0), (0, 0.0)])],
    [Series("nan", [(0, float("nan")), (1, 1.0), (None, 2.0), (3, None), (4, 2.0), (5, 3.0)])],
    [Series("all bad", [(None, None), (float("nan"), 1.0), (1.0, float("inf"))])],
    [Series("huge", [(0, 1e18), (1, 3e18)]), Series("tiny", [(0, 1e-9), (1, 2e-9)])],
    [Series(EVIL, [(0, 1), (1, 2)])],
])
def test_svg_helpers_produce_valid_svg(series):
    for svg in (line_chart(series, title=EVIL, x_label="x", y_label="y"),
                scatter_chart(series, series, title="s", include_zero_x=True)):
        root = assert_svg_ok(svg)
        geometry = " ".join(v for el in root.iter() for k, v in el.attrib.items()
                            if k not in ("aria-label", "font-family"))
        assert "nan" not in geometry.lower() and "inf" not in geometry.lower()
        if series and series[0].name == EVIL:
            assert "<script" not in svg
            assert any(EVIL in (t.text or "") for t in root.iter("text"))


def test_curves_group_metrics_on_a_shared_scale():
    groups = {m: _metric_group(m) for m in (
        "reward/gold", "reward/proxy", "eval/gold", "eval/proxy", "kl/seq", "eval/kl",
        "kl/chosen", "loss/policy", "loss/value", "eval/loss", "reward/accuracy", "eval/accuracy",
        "ppo/clipfrac", "reward/margin", "policy/entropy")}
    assert {m for m, g in groups.items() if g == "reward"} == {
        "reward/gold", "reward/proxy", "eval/gold", "eval/proxy"}
    assert {m for m, g in groups.items() if g == "kl"} == {"kl/seq", "eval/kl", "kl/chosen"}
    assert {m for m, g in groups.items() if g == "loss"} == {"loss/policy", "loss/value",
                                                             "eval/loss"}
    assert {m for m, g in groups.items() if g == "accuracy"} == {
        "reward/accuracy", "eval/accuracy"}
    for alone in ("ppo/clipfrac", "reward/margin", "policy/entropy"):
        assert groups[alone] == alone


def test_empty_chart_says_no_data():
    assert "no data" in line_chart([Series("a", [(None, 1)])])


def test_reliability_diagram_handles_bad_bins():
    for bins in ([], [{"mean_prob": None}], [{"bin": "x", "count": 0, "mean_prob": 0.5,
                                               "frac_positive": 0.4}], ["junk"]):
        assert_svg_ok(reliability_diagram(bins))


def test_ticks_are_round_and_labels_compact():
    assert nice_ticks(0, 1) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(nice_ticks(3, 3)) >= 2  # constant data still gets an axis
    assert fmt_ticks([0, 5000, 10000, 15000]) == ["0", "5k", "10k", "15k"]
    assert fmt_ticks(nice_ticks(0, 3e-4)) == ["0", "1e-4", "2e-4", "3e-4"]
    assert all(len(s) <= 6 for s in fmt_ticks(nice_ticks(1e17, 5e17)))
    assert fmt_number(None) == "—" and fmt_number(float("nan")) == "—"
    assert fmt_number(1234) == "1,234"


def test_write_report_is_atomic(tmp_path):
    data = example_data()
    out = write_report(data, tmp_path / "report.html")
    assert out == tmp_path / "report.html"
    assert out.read_text(encoding="utf-8") == render(data)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    # Overwriting goes through the same rename: still one file, the new content.
    write_report({"title": "second"}, out)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert "second" in out.read_text(encoding="utf-8")


def test_write_report_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'report.html'}: disk full"):
        write_report({"title": "t"}, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


def test_example_data_is_not_mutated_by_render():
    data = example_data()
    before = copy.deepcopy(data)
    render(data)
    assert data == before


def test_command_line_writes_example(tmp_path, capsys):
    assert main([str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == render(example_data())
    assert main([]) == 2


# ---------------------------------------------------------------------------------------------
# A report that never presents a broken result as a win (issue 19)
# ---------------------------------------------------------------------------------------------

WRITING_MORE = "a policy can gain proxy reward just by writing more"


def bias(rm: float, gold: float, n: int = 2000, err: float | None = None) -> dict:
    return {"rm_length_pearson": rm, "gold_length_pearson": gold, "err_pearson": err, "n": n}


@pytest.mark.parametrize("rm, gold, expected", [
    # proxy rewards length, gold does not (or penalises it): the exploit is there
    (0.5, 0.05, "favours longer responses more than gold does"),
    (0.4, -0.3, "favours longer responses more than gold does"),
    # proxy rewards length, but no more than gold does: nothing to exploit
    (0.4, 0.45, "favours longer responses (r = 0.40 vs 0.45 for gold), but not clearly more"),
    (0.3, 0.7, "favours longer responses (r = 0.30 vs 0.70 for gold), but not clearly more"),
    # both negative, the proxy's the smaller (the issue's case, with enough samples to tell):
    # the proxy dislikes length less than gold does, which is not rewarding it
    (-0.25, -0.5, "favours shorter responses (r = -0.25 vs -0.50 for gold), but not clearly"),
    # the proxy penalises length more than gold does, or where gold rewards it: the opposite
    (-0.5, -0.1, "favours shorter responses more than gold does"),
    (-0.3, 0.4, "favours shorter responses more than gold does"),
    # near zero: no conclusion, whatever gold does
    (0.05, -0.6, "no clear dependence on length"),
    (-0.05, 0.6, "no clear dependence on length"),
])
def test_length_bias_sentence_follows_signs_and_sizes(rm, gold, expected):
    sentence = _length_bias_sentence(bias(rm, gold))
    assert expected in sentence
    assert (WRITING_MORE in sentence) == expected.startswith("favours longer responses more")


def test_length_bias_sentence_from_the_issue_says_nothing_from_noise():
    # The quick run: corr(proxy, length) = -0.12, corr(gold, length) = -0.27 over 48 responses.
    # The old reading (rm - gold > 0.1) concluded the proxy rewards writing more.
    sentence = _length_bias_sentence(bias(-0.12, -0.27, n=48))
    assert WRITING_MORE not in sentence
    assert "no clear dependence on length" in sentence and "±0.29" in sentence
    # The same correlations over many responses are a finding, but not that one.
    sentence = _length_bias_sentence(bias(-0.12, -0.27, n=5000))
    assert sentence.startswith("The reward model favours shorter responses")
    assert WRITING_MORE not in sentence


def test_length_bias_sentence_from_the_error_correlation_alone():
    assert "longer than gold would prefer" in _length_bias_sentence(
        bias(None, None, n=500, err=0.3))
    assert "shorter than gold would prefer" in _length_bias_sentence(
        bias(None, None, n=500, err=-0.3))
    assert "no clear dependence" in _length_bias_sentence(bias(None, None, n=500, err=0.05))
    assert _length_bias_sentence(bias(0.5, 0.0, n=3)) == ""  # too few to say anything
    assert _length_bias_sentence({"n": 500}) == ""


def test_the_page_carries_the_length_bias_sentence():
    data = example_data()
    data["rm"]["length_bias"] = {"err_pearson": 0.1, "err_spearman": 0.1, "n": 48,
                                 "rm_length_pearson": -0.12, "gold_length_pearson": -0.27}
    page = render(data)
    assert "no clear dependence on length" in page
    assert WRITING_MORE not in page
    assert WRITING_MORE in render(example_data())  # 0.24 vs 0.05 over 500: a clear lean


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_responses_are_shown_as_empty(text):
    data = example_data()
    data["samples"][0]["responses"][1]["text"] = text
    page = render(data)
    cells = re.findall(r'<td class="response">(.*?)</td>', page, flags=re.S)
    assert cells[1] == '<span class="muted"><i>(empty)</i></span>'
    assert page.count("(empty)") == 1  # the others are real text, shown as written


def test_responses_with_text_are_not_marked_empty():
    page = render(example_data())
    assert "(empty)" not in page
    assert '<td class="response">Wonderful wonderful film!!!' in page


def test_the_stages_own_checks_are_in_the_report_s_warnings(tmp_path):
    from tether.report.collect import collect

    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "eval.json").write_text(json.dumps({"metrics": {
        "eval/accuracy": 0.5, "eval/accuracy_ci_lo": 0.397, "eval/accuracy_ci_hi": 0.615,
        "eval/empty_wins": 0.7, "eval/pairs": 96, "eval/ece": 0.1}}))
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "health/collapse": float(s > 4), "health/no_eos_penalty": 0.0})
        + "\n" for s in range(1, 7)))
    warnings = collect(tmp_path)["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["rm", "rm", "ppo"]
    assert "0.500 [95% CI 0.397, 0.615] cannot be told from chance" in warnings[0]
    assert "outscores 70% of the real responses" in warnings[1]
    assert warnings[2] == ("ppo: its health checks flagged the responses collapsed toward "
                           "empty (2 of 6 checks)")
    # A healthy run: nothing.
    (tmp_path / "rm" / "eval.json").write_text(json.dumps({"metrics": {
        "eval/accuracy": 0.7, "eval/accuracy_ci_lo": 0.62, "eval/accuracy_ci_hi": 0.78,
        "eval/empty_wins": 0.1, "eval/pairs": 96, "eval/ece": 0.1}}))
    (tmp_path / "ppo" / "metrics.jsonl").write_text(json.dumps({"step": 1,
                                                                "health/collapse": 0.0}))
    assert collect(tmp_path)["warnings"] == []


def test_an_old_run_s_metric_names_still_plot(tmp_path):
    """Runs written before tether.metric_names spelled held-out metrics loss/eval and
    reward/eval_accuracy and the reward model's accuracy reward/train_accuracy: `tether report`
    on such a run directory draws them under today's names."""
    from tether.report.collect import collect, write_run_report

    old = {"sft": [{"step": 0, "loss/eval": 4.0}, {"step": 1, "loss/train": 3.0,
                                                  "loss/eval": 3.5}],
           "rm": [{"step": 1, "loss/train": 0.7, "reward/train_accuracy": 0.6},
                  {"step": 2, "eval/loss": 0.6, "eval/accuracy": 0.7}],
           "dpo": [{"step": 0, "loss/eval": 0.69, "reward/eval_accuracy": 0.5},
                   {"step": 1, "loss/train": 0.6, "reward/accuracy": 0.7}]}
    for stage, rows in old.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    curves = collect(tmp_path)["curves"]
    assert curves["sft"] == {"loss/train": [[1, 3.0]], "eval/loss": [[0, 4.0], [1, 3.5]]}
    assert curves["rm"] == {"loss/train": [[1, 0.7]], "eval/loss": [[2, 0.6]],
                            "reward/accuracy": [[1, 0.6]], "eval/accuracy": [[2, 0.7]]}
    assert curves["dpo"] == {"loss/train": [[1, 0.6]], "eval/loss": [[0, 0.69]],
                             "reward/accuracy": [[1, 0.7]], "eval/accuracy": [[0, 0.5]]}
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": {}}))
    page = write_run_report(tmp_path).read_text(encoding="utf-8")
    assert "<h3>Reward model</h3>" in page and "reward/accuracy" in page
