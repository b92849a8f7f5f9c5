"""The report as one self-contained HTML page: inline SVG bar charts, no scripts, no
network, so it can be mailed or opened from a shared drive in the morning."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nightshift report {{ r.job_id }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
.big { font-size: 1.6em; font-weight: 600; } .muted { color: #777; }
svg text { font: 11px system-ui, sans-serif; }
</style></head><body>
<h1>Job {{ r.job_id }}</h1>
<p class="muted">{{ r.kind }} · {{ r.state }} · {{ r["items"] }} items ·
checks: {{ r.checks | join(", ") or "none" }}</p>
{{ summary }}
</body></html>
"""


# What the report says, as the page shows it and the dashboard's job page too.
SUMMARY = """<table><tr><th>first-try pass rate</th><th>after retries</th><th>needs review</th>
<th>retry tokens</th></tr>
<tr><td class="big">{{ pct(r.first_try_pass_rate) }}</td>
<td class="big">{{ pct(r.final_pass_rate) }}</td><td class="big">{{ r.needs_review }}</td>
<td class="big">{{ r.tokens.retries }}</td></tr></table>
{% if r.reviewed %}<p>Reviewed by people: {{ r.reviewed }}; agreeing with the checks
{{ pct(r.human_agreement) }}{% if r.human_accuracy is not none %}; labels right
{{ pct(r.human_accuracy) }}{% endif %}.</p>{% endif %}
{% for key in ["accuracy", "ece", "rouge_l", "bleu", "exact_match"] if key in r %}
{% if loop.first %}<h2>Against the references</h2><table>{% endif %}
<tr><td>{{ key }}</td><td>{{ r[key] }}</td></tr>{% if loop.last %}</table>{% endif %}
{% endfor %}
{% for title, data in charts if data %}
<h2>{{ title }}</h2>{{ bars(data) }}
{% endfor %}
{% if r.failure_reasons %}<h2>Why items still fail</h2><table>
{% for name, reasons in r.failure_reasons.items() %}{% for reason, n in reasons %}
<tr><td>{{ name }}</td><td>{{ n }}</td><td>{{ reason }}</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
"""


def bars(data: dict[str, int]) -> str:
    """A horizontal bar chart as inline SVG."""
    top = max(data.values()) or 1
    row, width, label_w = 22, 420, 150
    parts = [f'<svg width="{label_w + width + 60}" height="{row * len(data) + 4}" '
             f'role="img">']
    for i, (label, value) in enumerate(data.items()):
        y = i * row + 2
        w = max(1, round(width * value / top))
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_esc(label)}'
                     f'</text><rect x="{label_w}" y="{y + 3}" width="{w}" height="{row - 6}" '
                     f'fill="#4a7bd0"/><text x="{label_w + w + 5}" y="{y + 15}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _charts(report: dict[str, Any]) -> list[tuple[str, dict[str, int]]]:
    return [("Attempts per item", report["attempts_histogram"]),
            ("Items still failing, by check", report["failures_by_check"]),
            ("First-try failures, by check", report["first_try_failures_by_check"]),
            ("Judge scores", report["judge_scores"]),
            ("Label confidence", report["confidence_histogram"])]


def render(report: dict[str, Any]) -> str:
    return _env().from_string(PAGE).render(r=report, summary=summary(report))


def summary(report: dict[str, Any]) -> Any:
    """Pass rates, reference metrics, the plots and why items still fail, as markup."""
    return _markup(_env().from_string(SUMMARY).render(r=report, charts=_charts(report)))


def _env() -> Environment:
    env = Environment(autoescape=True)
    env.globals.update(bars=lambda d: _markup(bars(d)), pct=_percent)
    return env


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _markup(svg: str) -> Any:
    from markupsafe import Markup

    return Markup(svg)  # noqa: S704 - built from escaped labels and numbers only
