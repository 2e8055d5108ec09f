"""concepts.html: a self-contained page of a hierarchical run's concepts, their base latents
and the held-out text each of them fires on (DESIGN 4). Ours; no network, opens from disk.

    data = concept_page_data(run_dir, sae, top, tokens, token_text, coherence)
    write_concept_page(run_dir / "concepts.html", data)

The page holds every alive concept (MIN_FIRINGS firings on the held-out tokens, as in
evals/hierarchy.py), sortable by firing frequency, NMI, coherence and index; for the concept
opened, its own top contexts and its top-m base latents by |W_enc2| with their weight, P(b|c),
NMI, firing rate, top contexts and every concept that reads them. A context is a short window of
held-out tokens around the firing token (highlighted), with the activation. The search box
takes token text (matched in the firing tokens of a concept's and its children's contexts) or a
latent index (a concept's own, or a base latent it reads).

Flagged as such, never hidden: hubs (base latents read by at least HUB_FACTOR times the share
of concepts a random assignment gives them, and at least 3), concepts no two of whose children
share a top token, concepts firing on more than half the tokens (dense), a dead or degenerate
level (the header names it), and the concepts not alive (counted).

The URL hash drives the page, so a link (or a test) can open it in a state:
`#concept=12`, `#latent=952`, `#search=the`, `#sort=nmi`, combined with `&`.
Elements: each concept's row and detail carry `data-concept="<index>"`, each base latent
`data-latent="<index>"`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from sae_harness.records.numbers import finite_number
from sae_harness.evals.concept_contexts import TopActivations
from sae_harness.evals.hierarchy import MIN_FIRINGS
from sae_harness.evals.weights import strongest_base_latents
from sae_harness.records.frontier import vs_baseline_summary
from sae_harness.data.heldout_tokens import HeldoutTokens
from sae_harness.records.run_directory import read_config_json, read_json

PAGE = "concepts.html"
TOP_M = 5
"""Base latents shown per concept (evals/hierarchy.py's top_m)."""
HUB_FACTOR = 5.0
"""A base latent read by this many times the concepts chance gives it (C m / n_base) is a hub."""
WINDOW = (10, 4)
"""Tokens shown before and after the firing token in a context."""
DENSE_RATE = 0.5
"""A concept firing on more than this fraction of the held-out tokens is flagged dense."""

HEADLINE = [("EV", "training", "explained_variance", ".3f"), ("L0 base", "training", "l0_base", ".1f"),
            ("L0 concept", "training", "l0_concept", ".1f"),
            ("dead base", "training", "dead_fraction_base", ".1%"),
            ("dead concept", "training", "dead_fraction_concept", ".1%"),
            ("CE loss score", "core", "ce_loss_score", ".3f"),
            ("SAE top-1", "sparse_probing", "sae_top_1_test_accuracy", ".3f"),
            ("absorption", "absorption", "mean_absorption_fraction_score", ".3f"),
            ("NMI", "hierarchy", "nmi_mean", ".3f"), ("null NMI", "hierarchy", "null_nmi_mean", ".3f"),
            ("sibling NMI", "hierarchy", "sibling_nmi_mean", ".4f"),
            ("null sibling NMI", "hierarchy", "null_sibling_nmi_mean", ".4f"),
            ("coherence", "hierarchy", "concept_coherence_mean", ".3f"),
            ("null coherence", "hierarchy", "null_concept_coherence_mean", ".3f")]
"""(label, final_info group, key, format) of the header's figures; missing ones are left out."""


def _number(value, digits: int = 4):
    """A JSON-safe rounded float (None for NaN or a missing value)."""
    number = finite_number(value)
    return None if number is None else round(number, digits)


def _contexts(values: torch.Tensor, rows: torch.Tensor, column: int) -> list[list]:
    """[[row, activation], ...] of one latent's firing top rows, descending."""
    keep = values[:, column] > 0
    return [[int(r), _number(v, 3)] for r, v in zip(rows[keep, column].tolist(),
                                                    values[keep, column].tolist())]


def concept_page_data(run_dir: Path, sae, top: TopActivations, tokens: HeldoutTokens,
                      token_text, coherence: dict[int, dict] | None = None) -> dict:
    """Everything the page shows, as JSON-ready data. `token_text(ids)` gives each token id's
    text; `coherence` maps concept -> concept_coherence's row (absent: not measured)."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "final_info.json") if (run_dir / "final_info.json").is_file() else {}
    config = read_config_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    hierarchy_file = run_dir / "hierarchy.json"
    rows = {row["concept"]: row for row in read_json(hierarchy_file)["concepts"]} \
        if hierarchy_file.is_file() else {}
    coherence = coherence or {}

    alive = (top.concept_firings >= MIN_FIRINGS).nonzero().squeeze(1).tolist()
    strongest = strongest_base_latents(sae.W_enc2.detach().float().cpu(), TOP_M)
    weights = sae.W_enc2.detach().float().cpu()
    concepts, readers = [], {}
    for c in alive:
        row = rows.get(c, {})
        children = row.get("top_base", strongest[c].tolist())
        for b in children:
            readers.setdefault(b, []).append(c)
        nmi = row.get("nmi")
        concepts.append({
            "i": c, "firings": int(top.concept_firings[c]),
            "rate": _number(top.concept_firings[c].item() / max(top.tokens, 1), 6),
            "children": children, "weights": [_number(weights[b, c]) for b in children],
            "p_b_given_c": [_number(p) for p in row.get("p_b_given_c", [None] * len(children))],
            "nmi": [_number(v) for v in (nmi or [None] * len(children))],
            "nmi_mean": _number(sum(nmi) / len(nmi)) if nmi else None,
            "leakage": _number(row.get("leakage")), "sibling_nmi": _number(row.get("sibling_nmi")),
            "coherence": _number(coherence.get(c, {}).get("coherence")),
            "null_coherence": _number(coherence.get(c, {}).get("null_coherence")),
            "shares_no_top_token": coherence.get(c, {}).get("shares_no_top_token"),
            "contexts": _contexts(top.concept_values, top.concept_rows, c)})
    n_base = sae.n_base
    chance = len(alive) * TOP_M / max(n_base, 1)
    hub_threshold = max(3, math.ceil(HUB_FACTOR * chance))
    base = {str(b): {"firings": int(top.base_firings[b]),
                     "rate": _number(top.base_firings[b].item() / max(top.tokens, 1), 6),
                     "readers": sorted(set(cs)), "hub": len(set(cs)) >= hub_threshold,
                     "contexts": _contexts(top.base_values, top.base_rows, b)}
            for b, cs in readers.items()}

    used = sorted(set(tokens.ids.tolist()))
    index = {t: i for i, t in enumerate(used)}
    training = info.get("training", {})
    warnings = list(training.get("degenerate_reasons", []) or [])
    if not alive:
        warnings.append(f"dead concept level: no concept latent fires {MIN_FIRINGS} times on the "
                        f"{top.tokens} held-out tokens")
    dense = [c["i"] for c in concepts if (c["rate"] or 0) > DENSE_RATE]
    if dense:
        warnings.append(f"{len(dense)} concepts fire on more than {DENSE_RATE:.0%} of the tokens "
                        f"(dense): {', '.join(map(str, dense[:10]))}{' ...' if len(dense) > 10 else ''}")
    alive_base = int((top.base_firings > 0).sum())
    if alive_base < 0.5 * n_base:
        warnings.append(f"only {alive_base} of {n_base} base latents fire on the held-out tokens")
    hubs = sorted((b for b in base if base[b]["hub"]), key=lambda b: -len(base[b]["readers"]))
    if hubs:
        warnings.append(f"{len(hubs)} hub base latents (read by >= {hub_threshold} concepts): "
                        + ", ".join(f"{b} ({len(base[b]['readers'])})" for b in hubs[:8]))
    headline = []
    for label, group, key, spec in HEADLINE:
        value = finite_number(info.get(group, {}).get("means", {}).get(key))
        if value is not None:
            headline.append([label, format(value, spec)])
    return {
        "run": run_dir.name, "variant": config.get("variant_title") or config.get("variant", ""),
        "model": f"{config.get('preset', {}).get('model_name', '?')} layer "
                 f"{config.get('preset', {}).get('hook_layer', '?')}",
        "headline": headline, "vs_baseline": vs_baseline_summary(info),
        "warnings": warnings, "n_base": n_base, "n_concept": sae.n_concept,
        "alive_base": alive_base, "tokens": top.tokens, "min_firings": MIN_FIRINGS,
        "hub_threshold": hub_threshold, "window": list(WINDOW), "concepts": concepts, "base": base,
        "vocab": [token_text(t) for t in used],
        "token_row": [index[t] for t in tokens.ids.tolist()],
        "context_row": tokens.context.tolist(),
        "document_starts": tokens.document_start.nonzero().squeeze(1).tolist(),
    }


def write_concept_page(path: Path, data: dict) -> int:
    """Write the page (data inlined as JSON) and return its size in bytes."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    payload = payload.replace("</", "<\\/")  # no '</script>' can close the data block
    page = (_TEMPLATE.replace("%TITLE%", html.escape(f"Concepts of {data['run']}"))
            .replace("%STYLE%", _STYLE).replace("%SCRIPT%", _SCRIPT).replace("%DATA%", payload))
    path = Path(path)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path.stat().st_size


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<style>%STYLE%</style></head>
<body>
<header id="header"></header>
<nav id="controls">
  <input id="search" type="search" placeholder="search: token text or latent index" size="36">
  <label>sort by <select id="sort">
    <option value="frequency">firing frequency</option><option value="nmi">NMI</option>
    <option value="coherence">coherence</option><option value="index">index</option>
  </select></label>
  <span id="shown"></span>
</nav>
<main>
  <section id="list"><table id="concepts"><thead><tr><th>concept</th><th>fires</th><th>NMI</th>
    <th>coh.</th><th>leak</th><th>top tokens</th></tr></thead><tbody></tbody></table></section>
  <section id="detail"><p class="hint">Open a concept on the left, or a base latent.</p></section>
</main>
<script id="data" type="application/json">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#1f2d3d;color:#eee}
header h1{font-size:17px;margin:0 0 4px}
header .figures span{display:inline-block;margin:2px 12px 2px 0}
header .figures b{color:#fff}
header .vs{color:#cde;margin-top:4px}
header .warning{color:#ffcf66;margin-top:3px}
nav{padding:8px 16px;background:#e8ecf0;position:sticky;top:0;z-index:2}
nav input{padding:3px 6px}
#shown{margin-left:12px;color:#555}
main{display:flex;gap:12px;padding:8px 16px;align-items:flex-start}
#list{flex:0 0 520px;max-height:calc(100vh - 140px);overflow-y:auto;background:#fff;border:1px solid #ddd}
#concepts{border-collapse:collapse;width:100%}
#concepts th{position:sticky;top:0;background:#f0f0f0;text-align:left;padding:3px 6px}
#concepts td{padding:2px 6px;border-top:1px solid #eee;white-space:nowrap}
#concepts td.tokens{white-space:normal;font-family:ui-monospace,monospace;font-size:12px}
#concepts tr{cursor:pointer}
#concepts tr:hover{background:#eef4ff}
#concepts tr.open{background:#dbe8ff}
#detail{flex:1;min-width:0;background:#fff;border:1px solid #ddd;padding:8px 12px}
h2{font-size:16px;margin:4px 0}h3{font-size:14px;margin:10px 0 4px}
.flag{display:inline-block;padding:0 5px;margin-left:4px;border-radius:3px;font-size:11px;
  background:#ffe2a8;color:#6b4500}
.flag.bad{background:#ffc9c9;color:#7a0000}
.child{border-left:3px solid #9ab;padding:2px 8px;margin:8px 0}
.child.hub{border-left-color:#d08a00}
.stats span{margin-right:12px}
ol.contexts{margin:2px 0;padding-left:22px}
.context{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word}
.context .act{display:inline-block;width:52px;color:#666}
.context mark{background:#ffb347;font-weight:bold}
.context .doc{color:#aaa}
.readers a{margin-right:6px}
.hint{color:#777}
"""

_SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const fmt = (v, d) => (v === null || v === undefined) ? "–" : Number(v).toFixed(d);
const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(v < 0.001 ? 3 : 2) + "%";
const starts = new Set(D.document_starts);
const byIndex = new Map(D.concepts.map((c) => [c.i, c]));
const show = (t) => t.replace(/\n/g, "⏎").replace(/\t/g, "⇥");

function tokenAt(row) { return D.vocab[D.token_row[row]]; }
function contextHTML([row, act]) {
  const [before, after] = D.window, ctx = D.context_row[row];
  let lo = row, hi = row;
  while (lo > 0 && row - lo < before && D.context_row[lo - 1] === ctx && !starts.has(lo)) lo--;
  while (hi + 1 < D.token_row.length && hi - row < after && D.context_row[hi + 1] === ctx && !starts.has(hi + 1)) hi++;
  let s = `<li class="context" data-row="${row}"><span class="act">${fmt(act, 2)}</span>`;
  if (starts.has(lo)) s += '<span class="doc">¶</span>';
  for (let r = lo; r <= hi; r++) {
    const t = esc(show(tokenAt(r)));
    s += r === row ? `<mark>${t}</mark>` : t;
  }
  return s + "</li>";
}
function contextsHTML(list) {
  if (!list.length) return '<p class="hint">no firing on the held-out tokens</p>';
  return '<ol class="contexts">' + list.map(contextHTML).join("") + "</ol>";
}
function topTokens(list, n) {
  const seen = [];
  for (const [row] of list) { const t = tokenAt(row); if (!seen.includes(t)) seen.push(t); if (seen.length === n) break; }
  return seen;
}
// search text of a concept: its own and its children's firing tokens, lower case
for (const c of D.concepts) {
  const words = c.contexts.map(([r]) => tokenAt(r));
  for (const b of c.children) for (const [r] of (D.base[b] ? D.base[b].contexts : [])) words.push(tokenAt(r));
  c.search = "\u0001" + words.map((w) => w.trim().toLowerCase()).join("\u0001") + "\u0001";
}
function flags(c) {
  let s = "";
  if (c.shares_no_top_token) s += '<span class="flag bad" title="no two children share a top token">incoherent</span>';
  if (c.rate > 0.5) s += '<span class="flag bad" title="fires on more than half the tokens">dense</span>';
  if (c.children.some((b) => D.base[b] && D.base[b].hub)) s += '<span class="flag" title="reads a hub base latent">hub child</span>';
  return s;
}

function header() {
  let s = `<h1>Concepts of ${esc(D.run)}: ${esc(D.variant)}</h1>`;
  s += `<div class="figures"><span>${esc(D.model)}</span>`;
  s += `<span>alive concepts <b>${D.concepts.length}</b> / ${D.n_concept} (≥${D.min_firings} firings on ${D.tokens} held-out tokens)</span>`;
  s += `<span>firing base latents <b>${D.alive_base}</b> / ${D.n_base}</span>`;
  for (const [label, value] of D.headline) s += `<span>${esc(label)} <b>${esc(value)}</b></span>`;
  s += "</div>";
  s += `<div class="vs">${D.vs_baseline ? esc(D.vs_baseline) : "vs_baseline: no baseline frontier for this setting"}</div>`;
  for (const w of D.warnings) s += `<div class="warning">⚠ ${esc(w)}</div>`;
  $("#header").innerHTML = s;
}

function buildList() {
  const body = $("#concepts tbody");
  body.innerHTML = D.concepts.map((c) =>
    `<tr class="concept" data-concept="${c.i}"><td>${c.i}${flags(c)}</td><td>${pct(c.rate)}</td>` +
    `<td>${fmt(c.nmi_mean, 3)}</td><td>${fmt(c.coherence, 2)}</td><td>${fmt(c.leakage, 2)}</td>` +
    `<td class="tokens">${esc(topTokens(c.contexts, 4).map((t) => show(t).trim() || "␣").join(" | "))}</td></tr>`).join("");
  for (const tr of body.rows) tr.addEventListener("click", () => setHash({concept: tr.dataset.concept, latent: null}));
}
const SORTS = {
  frequency: (a, b) => b.firings - a.firings,
  nmi: (a, b) => (b.nmi_mean ?? -1) - (a.nmi_mean ?? -1),
  coherence: (a, b) => (b.coherence ?? -1) - (a.coherence ?? -1),
  index: (a, b) => a.i - b.i,
};
function applyList(state) {
  const sort = SORTS[state.sort] ? state.sort : "frequency";
  $("#sort").value = sort;
  const q = (state.search || "").trim().toLowerCase();
  $("#search").value = state.search || "";
  const body = $("#concepts tbody");
  const rows = new Map([...body.rows].map((tr) => [Number(tr.dataset.concept), tr]));
  let shown = 0;
  for (const c of [...D.concepts].sort(SORTS[sort])) {
    const tr = rows.get(c.i);
    body.appendChild(tr);
    const match = !q || (/^\d+$/.test(q) ? (c.i === Number(q) || c.children.includes(Number(q)))
                                         : c.search.includes(q));
    tr.hidden = !match;
    tr.classList.toggle("match", Boolean(q) && match);
    tr.classList.toggle("open", String(c.i) === state.concept);
    if (match) shown++;
  }
  $("#shown").textContent = `${shown} of ${D.concepts.length} concepts shown`;
}

function readersHTML(b) {
  const info = D.base[b];
  const links = info.readers.map((c) => `<a href="#concept=${c}" data-concept-link="${c}">${c}</a>`).join("");
  return `<div class="readers">read by ${info.readers.length} concept${info.readers.length === 1 ? "" : "s"}` +
         `${info.hub ? '<span class="flag" title="read by many concepts">hub</span>' : ""}: ${links}</div>`;
}
function conceptDetail(c) {
  let s = `<div class="concept-detail" data-concept="${c.i}"><h2>Concept ${c.i}${flags(c)}</h2>`;
  s += `<div class="stats"><span>fires on ${c.firings} tokens (${pct(c.rate)})</span><span>NMI ${fmt(c.nmi_mean, 3)}</span>` +
       `<span>leakage ${fmt(c.leakage, 3)}</span><span>sibling NMI ${fmt(c.sibling_nmi, 4)}</span>` +
       `<span>coherence ${fmt(c.coherence, 3)} (null ${fmt(c.null_coherence, 3)})</span></div>`;
  s += `<h3>Its top contexts</h3>${contextsHTML(c.contexts)}`;
  s += `<h3>Base latents it reads (top ${c.children.length} by |W_enc2|)</h3>`;
  c.children.forEach((b, j) => {
    const info = D.base[b];
    s += `<div class="child${info.hub ? " hub" : ""}" data-latent="${b}"><div class="stats">` +
         `<span><a href="#latent=${b}">base ${b}</a></span><span>weight ${fmt(c.weights[j], 3)}</span>` +
         `<span>P(b|c) ${fmt(c.p_b_given_c[j], 3)}</span><span>NMI ${fmt(c.nmi[j], 3)}</span>` +
         `<span>fires ${pct(info.rate)}</span></div>${readersHTML(b)}${contextsHTML(info.contexts)}</div>`;
  });
  return s + "</div>";
}
function latentDetail(b) {
  const info = D.base[b];
  if (!info) return `<div class="latent-detail" data-latent="${b}"><h2>Base latent ${esc(b)}</h2>` +
                    '<p class="hint">no alive concept reads it among its top base latents</p></div>';
  return `<div class="latent-detail" data-latent="${b}"><h2>Base latent ${b}</h2>` +
         `<div class="stats"><span>fires on ${info.firings} tokens (${pct(info.rate)})</span></div>` +
         `${readersHTML(b)}<h3>Its top contexts</h3>${contextsHTML(info.contexts)}</div>`;
}

function readHash() {
  const state = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const at = part.indexOf("=");
    if (at > 0) state[part.slice(0, at)] = decodeURIComponent(part.slice(at + 1));
  }
  return state;
}
function setHash(change) {
  const state = Object.assign(readHash(), change);
  const parts = Object.entries(state).filter(([, v]) => v !== null && v !== "" && v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`);
  location.hash = parts.join("&");
}
function render() {
  const state = readHash();
  applyList(state);
  const c = byIndex.get(Number(state.concept));
  if (state.latent !== undefined) $("#detail").innerHTML = latentDetail(state.latent);
  else if (state.concept !== undefined && c) $("#detail").innerHTML = conceptDetail(c);
  else if (state.concept !== undefined) $("#detail").innerHTML = `<p class="hint">concept ${esc(state.concept)} is not alive</p>`;
}

header();
buildList();
$("#search").addEventListener("input", (e) => setHash({search: e.target.value}));
$("#sort").addEventListener("change", (e) => setHash({sort: e.target.value}));
window.addEventListener("hashchange", render);
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href^='#concept=']");
  if (a) { e.preventDefault(); setHash({concept: a.dataset.conceptLink, latent: null}); }
});
render();
"""


def build_concept_page(directory, sae, tokenizer, preset, heldout: torch.Tensor, k: int = 10
                       ) -> tuple[int, dict[str, float]]:
    """The run's concepts.html from its held-out activations: the held-out tokens (recollected,
    heldout_tokens.py), the top-k rows of every latent in one pass, concept coherence (added to
    the `hierarchy` group and hierarchy.json when the hierarchy eval ran), then the page.
    Returns (page bytes, coherence means)."""
    from sae_harness.evals.concept_contexts import (COHERENCE_DEFINITIONS, concept_coherence,
                                                    top_activations)
    from sae_harness.data.heldout_tokens import heldout_tokens

    tokens = heldout_tokens(tokenizer, preset, len(heldout))
    top = top_activations(sae, heldout, k)
    alive = (top.concept_firings >= MIN_FIRINGS).nonzero().squeeze(1)
    alive_base = (top.base_firings >= MIN_FIRINGS).nonzero().squeeze(1)
    means, per_concept = {}, {}
    if len(alive):
        children = strongest_base_latents(sae.W_enc2.detach().float().cpu(), TOP_M)[alive]
        means, rows = concept_coherence(top, tokens.ids, children, alive_base)
        per_concept = dict(zip(alive.tolist(), rows))
        group = directory.final_info().get("hierarchy")
        if group:
            extra = {key: value for key, value in group.items() if key != "means"}
            directory.set_group("hierarchy", {**group["means"], **means}, **extra)
            details = read_json(directory.file("hierarchy.json"))
            details["means"].update(means)
            details["definitions"].update(COHERENCE_DEFINITIONS)
            directory.write_json("hierarchy.json", details)
    data = concept_page_data(directory.path, sae, top, tokens,
                             lambda t: tokenizer.decode([t]), per_concept)
    return write_concept_page(directory.file(PAGE), data), means
