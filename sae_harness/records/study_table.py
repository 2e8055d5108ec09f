"""The study table: one row per run, the headline figures and, where the run has a
vs_baseline group, its differences from each frontier family at equal L0.

plot.py prints it, and the README's results table is that output; the headline figures of
notes.txt's Results lines are notes.HEADLINE_METRICS.
"""

from __future__ import annotations

from sae_harness.records.run_directory import RunRecord


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    if spec == "tokens":
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.1f}{unit}"
        return f"{value:.1f}"
    if spec == "%":
        return f"{value:.1%}"
    return format(value, spec)


TABLE_COLUMNS = ["run", "label", "variant", "steps", "tokens", "EV", "L0 base", "L0 concept",
                 "SAE top-1", "SAE top-5", "LLM top-1", "LLM / SAE top-1 standardised", "absorption",
                 "NMI (null)", "dead base", "dead concept", "degenerate"]
VS_COLUMNS = [("explained_variance", "dEV"), ("absorption_fraction", "d absorption"),
              ("sae_top_1", "d top-1")]
"""The vs_baseline differences in the table, one column per metric (families side by side)."""
VS_FAMILIES = ("relu", "topk", "matryoshka")


def vs_baseline_cell(record: RunRecord, metric: str) -> str:
    """'relu / topk / matryoshka' differences at equal L0; '~' within seed noise, 'out' outside
    the family's L0 range, 'n/a' without a vs_baseline group."""
    group = record.final_info.get("vs_baseline")
    if not group:
        return "n/a"
    cells = []
    for family in VS_FAMILIES:
        value = group["means"].get(f"{family}.{metric}.difference")
        if value is None:
            cells.append("out" if family in group.get("out_of_range", {}) else "n/a")
        else:
            noise = "~" if f"{family}.{metric}" in group.get("within_seed_noise", []) else ""
            cells.append(f"{value:+.3f}{noise}")
    return " / ".join(cells)


def table_row(record: RunRecord, label: str) -> list[str]:
    m = record.metric
    ev, ev_note = m("training", "explained_variance"), ""
    if ev is None and m("core", "explained_variance_centered") is not None:
        ev, ev_note = m("core", "explained_variance_centered"), " (core)"
    nmi, null_nmi = m("hierarchy", "nmi_mean"), m("hierarchy", "null_nmi_mean")
    llm_std = m("sparse_probing", "llm_top_1_test_accuracy_standardised")
    sae_std = m("sparse_probing", "sae_top_1_test_accuracy_standardised")
    return [record.name, label, record.variant, _fmt(m("training", "steps"), ".0f"),
            _fmt(m("training", "tokens"), "tokens"), _fmt(ev, ".3f") + ev_note,
            _fmt(m("training", "l0_base"), ".1f"),
            _fmt(m("training", "l0_concept"), ".1f") if record.has_concept_level else "n/a",
            _fmt(m("sparse_probing", "sae_top_1_test_accuracy"), ".3f"),
            _fmt(m("sparse_probing", "sae_top_5_test_accuracy"), ".3f"),
            _fmt(m("sparse_probing", "llm_top_1_test_accuracy"), ".3f"),
            f"{_fmt(llm_std, '.3f')} / {_fmt(sae_std, '.3f')}",
            _fmt(m("absorption", "mean_absorption_fraction_score"), ".3f"),
            "n/a" if nmi is None else f"{nmi:.3f} ({_fmt(null_nmi, '.4f')})",
            _fmt(m("training", "dead_fraction_base"), "%"),
            _fmt(m("training", "dead_fraction_concept"), "%") if record.has_concept_level else "n/a",
            "**yes**" if record.degenerate else "no"]


def markdown_table(runs: list[tuple[RunRecord, str]]) -> str:
    """The table of every (run, label); a precision column when the runs' numbers come from
    different dtypes (a bf16 and an fp32 model give different activations, so their numbers differ)."""
    columns, rows = TABLE_COLUMNS, [table_row(record, label) for record, label in runs]
    records = [record for record, _ in runs]
    if any(r.final_info.get("vs_baseline") for r in records):
        columns = columns + [f"{title} vs {'/'.join(VS_FAMILIES)} at equal L0" for _, title in VS_COLUMNS]
        rows = [row + [vs_baseline_cell(r, metric) for metric, _ in VS_COLUMNS]
                for row, r in zip(rows, records)]
    if len({r.precision for r in records}) > 1:
        columns = columns + ["precision"]
        rows = [row + [r.precision or "n/a"] for row, r in zip(rows, records)]
    rows = [columns, ["---"] * len(columns)] + rows
    lines = ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    for record in records:
        if record.degenerate:
            lines.append(f"\n{record.name} is degenerate: " + "; ".join(record.degeneracy.reasons))
    return "\n".join(lines)
