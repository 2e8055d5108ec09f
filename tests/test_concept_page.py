"""concepts.html: the held-out tokens, the top contexts, concept coherence, and the page itself,
loaded in a real browser (Debian's chromium, headless) from the tiny fixture's run."""

import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import experiment as E
from saes import hierarchical_sae
from sae_harness.evals.concept_contexts import concept_coherence, top_activations
from sae_harness.records.run_directory import RunDirectory
from tiny_gemma2 import tiny_environment

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

TINY = dict(n_base=256, batch_size=128, training_tokens=128 * 40, heldout_tokens=512, lr=4e-3,
            log_every=5, dead_window_tokens=2048)


# --------------------------------------------------------------------------------------------
# The tiny fixture's run (weights and hierarchy evals only: the page needs nothing else)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def page_run(tiny_gemma2, page_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run_1"
    env = dataclasses.replace(tiny_environment(tiny_gemma2["text"], page_cache),
                              evaluations=("weights", "hierarchy"))
    E.run_experiment(out, env, overrides=TINY)
    return out


def page_data(run: Path) -> dict:
    """The JSON the page carries (its <script id="data"> block)."""
    text = (run / "concepts.html").read_text(encoding="utf-8")
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert found, "concepts.html holds no data block"
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_a_hierarchical_run_writes_its_page_coherence_and_phase_time(page_run):
    assert (page_run / "concepts.html").is_file(), "the run wrote no concepts.html"
    text = (page_run / "concepts.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page loads something from the network"
    status = json.loads((page_run / "run_status.json").read_text())
    assert status["state"] == "finished" and "concepts.html" not in status.get("failures", {})
    assert status["phase_seconds"]["concepts_page"] > 0, "the page's time is not in phase_seconds"
    means = json.loads((page_run / "final_info.json").read_text())["hierarchy"]["means"]
    for key in ("concept_coherence_mean", "null_concept_coherence_mean",
                "no_shared_top_token_fraction", "null_no_shared_top_token_fraction"):
        assert 0.0 <= means[key] <= 1.0, f"hierarchy group: {key} = {means.get(key)}"
    details = json.loads((page_run / "hierarchy.json").read_text())
    assert "concept_coherence_mean" in details["definitions"], "coherence is not defined in hierarchy.json"
    data = page_data(page_run)
    alive = [row["concept"] for row in details["concepts"]]
    assert sorted(c["i"] for c in data["concepts"]) == sorted(alive), "the page's concepts are not the alive ones"


def test_heldout_tokens_are_the_tokens_of_the_heldout_activations(page_run, tiny_lm, page_cache):
    """Row r of the held-out activations is the model's activation at token ids[r]."""
    from sae_harness.data.activations import iter_contexts, prepare_activations, special_token_ids
    from sae_harness.data.heldout_tokens import heldout_tokens
    from sae_harness.data.language_model import residual_stream
    from sae_harness.data.text_sources import documents

    preset, lm = tiny_lm
    data = prepare_activations(lm, preset, TINY["training_tokens"], TINY["heldout_tokens"],
                               page_cache, TINY["batch_size"], seed=0)
    assert data.cache_hit, "the run's activation cache was not reused"
    tokens = heldout_tokens(lm.tokenizer, preset, len(data.heldout))
    assert len(tokens.ids) == len(tokens.context) == len(data.heldout)
    second = [row for _, row in zip(range(2), iter_contexts(documents(preset, seed=0), lm.tokenizer,
                                                            preset.context_length))][1]
    rows = (tokens.context == 1).nonzero().squeeze(1)
    assert len(rows), "the held-out tokens do not reach the second context"
    content = [t for t in second if t not in special_token_ids(lm.tokenizer)]
    assert tokens.ids[rows].tolist() == content[:len(rows)], "token ids differ from the packed context's"
    with torch.no_grad():
        acts = residual_stream(lm.model, torch.tensor([second]), preset.hook_layer)[0]
    keep = ~torch.isin(torch.tensor(second), torch.tensor(special_token_ids(lm.tokenizer)))
    expected = acts[keep][:len(rows)].float()
    assert torch.allclose(expected, data.heldout[rows], atol=1e-4, rtol=1e-4), \
        "the held-out activations of context 1 are not the model's at the recollected tokens"


# --------------------------------------------------------------------------------------------
# Top contexts and coherence, on a small SAE and made-up tokens
# --------------------------------------------------------------------------------------------
def test_top_activations_in_one_pass_equal_a_full_sort():
    torch.manual_seed(0)
    sae = hierarchical_sae(16, 64, 16, 4)
    x = torch.randn(300, 16) * 3
    top = top_activations(sae, x, k=7, batch_size=64)
    out = sae.forward_levels(x)
    z1 = out.z1.float()
    z2 = torch.zeros(len(x), 16).scatter_add_(1, out.z2_indices, out.z2_values.clamp_min(0).float())
    for values, rows, dense in ((top.base_values, top.base_rows, z1), (top.concept_values, top.concept_rows, z2)):
        expected = dense.topk(7, dim=0).values
        assert torch.allclose(values, expected), "streamed top-k values differ from a full sort"
        assert torch.allclose(dense.gather(0, rows), values), "the rows do not hold the values"
    assert torch.equal(top.base_firings, (z1 > 0).sum(0)) and top.tokens == 300


def test_coherence_is_one_for_children_on_the_same_tokens_and_zero_for_disjoint_ones():
    n_base, k = 12, 3
    token_ids = torch.arange(200)
    rows = torch.tensor([[10 * b + j for b in range(n_base)] for j in range(k)])  # latent b: tokens 10b..10b+2
    rows[:, 1] = rows[:, 0]  # base 1 fires on base 0's tokens
    values = torch.ones(k, n_base)
    top = SimpleNamespace(base_values=values, base_rows=rows)
    children = torch.tensor([[0, 1], [2, 3]])
    means, per = concept_coherence(top, token_ids, children, torch.arange(n_base), n_null=3)
    assert per[0]["coherence"] == 1.0 and not per[0]["shares_no_top_token"]
    assert per[1]["coherence"] == 0.0 and per[1]["shares_no_top_token"]
    assert means["concept_coherence_mean"] == 0.5 and means["no_shared_top_token_fraction"] == 0.5
    assert means["null_concept_coherence_mean"] < 0.5, "the null of random latents is as coherent"


def test_a_failing_page_is_recorded_and_does_not_stop_the_run(tmp_path, monkeypatch):
    import sae_harness.run.experiment_run as experiment_run

    def broken(*args, **kwargs):
        raise RuntimeError("no tokens for you")

    monkeypatch.setattr(experiment_run, "build_concept_page", broken)
    directory = RunDirectory(tmp_path / "run_1")
    directory.path.mkdir()
    run = SimpleNamespace(directory=directory, phases={}, preset=None)
    sae = SimpleNamespace(n_concept=4)
    reason = experiment_run.ExperimentRun._write_concept_page(run, sae, SimpleNamespace(tokenizer=None),
                                                              SimpleNamespace(heldout=None))
    assert reason == "RuntimeError: no tokens for you", f"returned {reason!r}"
    assert directory.status()["failures"]["concepts.html"] == reason, "the failure is not in run_status.json"


# --------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------
class Elements(HTMLParser):
    """Every element of a DOM dump, as (tag, attributes, parent index), plus each one's text."""

    VOID = {"meta", "input", "br", "img", "link", "hr", "option"}

    def __init__(self, text: str):
        super().__init__()
        self.elements, self.text, self.stack = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), self.stack[-1] if self.stack else None))
        self.text.append("")
        if tag not in self.VOID:
            self.stack.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        while self.stack:
            if self.elements[self.stack.pop()][0] == tag:
                break

    def handle_data(self, data):
        for i in self.stack:
            self.text[i] += data

    def within(self, i: int, ancestor: int) -> bool:
        while i is not None:
            if i == ancestor:
                return True
            i = self.elements[i][2]
        return False

    def find(self, tag=None, within=None, **attrs):
        return [i for i, (t, a, _) in enumerate(self.elements)
                if (tag is None or t == tag) and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
                and (within is None or self.within(i, within))]

    def has_class(self, i: int, name: str) -> bool:
        return name in (self.elements[i][1].get("class") or "").split()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: `apt-get install -y chromium` (.ci/run does it)"
    return found


def browse(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on `url` with extra flags, its own profile."""
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           *args, url], capture_output=True, text=True, timeout=120)


def dom(run: Path, tmp_path: Path, fragment: str = "") -> Elements:
    """The page's DOM after its script ran, with `#fragment` in the URL."""
    url = (run / "concepts.html").resolve().as_uri() + (f"#{fragment}" if fragment else "")
    result = browse(tmp_path, url, "--dump-dom")
    assert result.returncode == 0 and "<body" in result.stdout, \
        f"chromium --dump-dom failed ({result.returncode}): {result.stderr.strip()[-500:]}"
    return Elements(result.stdout)


def visible_concepts(page: Elements) -> set[int]:
    return {int(page.elements[i][1]["data-concept"]) for i in page.find("tr")
            if "data-concept" in page.elements[i][1] and "hidden" not in page.elements[i][1]}


def test_the_page_renders_in_chromium_as_a_screenshot_that_is_not_blank(page_run, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    first = page_data(page_run)["concepts"][0]["i"]
    result = browse(tmp_path, (page_run / "concepts.html").resolve().as_uri() + f"#concept={first}",
                    f"--screenshot={shot}", "--window-size=1400,900")
    assert shot.is_file(), f"chromium wrote no screenshot: {result.stderr.strip()[-500:]}"
    image = Image.open(shot).convert("RGB").resize((140, 90))
    colours = len(set(image.getdata()))
    white = sum(1 for p in image.getdata() if min(p) > 245) / (140 * 90)
    assert colours > 50 and white < 0.9, f"the screenshot looks blank: {colours} colours, {white:.0%} white"


def test_the_dom_holds_every_concept_its_children_and_their_contexts(page_run, tmp_path):
    details = json.loads((page_run / "hierarchy.json").read_text())
    data = page_data(page_run)
    page = dom(page_run, tmp_path)
    assert visible_concepts(page) == {row["concept"] for row in details["concepts"]}, \
        "the concept list does not show every alive concept"
    assert page.find("header") and "Concepts of run_1" in page.text[page.find("h1")[0]], "no header"

    row = max(details["concepts"], key=lambda r: r["firings"])
    concept = row["concept"]
    page = dom(page_run, tmp_path, f"concept={concept}")
    detail = page.find("div", data_concept=str(concept))
    assert detail, f"opening #concept={concept} shows no element with data-concept={concept}"
    children = [int(page.elements[i][1]["data-latent"]) for i in page.find("div", within=detail[0])
                if page.has_class(i, "child")]
    assert children == row["top_base"], f"children {children}, hierarchy.json says {row['top_base']}"
    contexts = [i for i in page.find("li", within=detail[0]) if page.has_class(i, "context")]
    own = len(data["concepts"][[c["i"] for c in data["concepts"]].index(concept)]["contexts"])
    expected = own + sum(len(data["base"][str(b)]["contexts"]) for b in children)
    assert len(contexts) == expected > 0, f"{len(contexts)} contexts shown, {expected} expected"
    first = contexts[0]
    row_index = int(page.elements[first][1]["data-row"])
    marks = page.find("mark", within=first)
    assert len(marks) == 1, "a context does not highlight exactly one firing token"
    shown = page.text[marks[0]]
    token = data["vocab"][data["token_row"][row_index]].replace("\n", "⏎").replace("\t", "⇥")
    assert shown == token, f"the highlighted token {shown!r} is not the held-out token {token!r}"
    # each child links to every concept that reads it
    readers = {}
    for r in details["concepts"]:
        for b in r["top_base"]:
            readers.setdefault(b, set()).add(r["concept"])
    for child in [i for i in page.find("div", within=detail[0]) if page.has_class(i, "child")]:
        b = int(page.elements[child][1]["data-latent"])
        links = {int(page.elements[a][1]["data-concept-link"]) for a in page.find("a", within=child)
                 if "data-concept-link" in page.elements[a][1]}
        assert links == readers[b], f"base {b} links to {sorted(links)}, read by {sorted(readers[b])}"


def test_search_filters_the_concept_list(page_run, tmp_path):
    details = json.loads((page_run / "hierarchy.json").read_text())
    data = page_data(page_run)
    alive = {row["concept"] for row in details["concepts"]}
    # a latent index: the concepts that are it or read it
    counts = {}
    for row in details["concepts"]:
        for b in row["top_base"]:
            counts[b] = counts.get(b, 0) + 1
    latent = min(counts, key=lambda b: (counts[b] < 2, -counts[b]))
    expected = {row["concept"] for row in details["concepts"] if latent in row["top_base"]} \
        | ({latent} & alive)
    shown = visible_concepts(dom(page_run, tmp_path, f"search={latent}"))
    assert shown == expected and len(shown) < len(alive), \
        f"search {latent} shows {sorted(shown)}, expected {sorted(expected)}"
    # token text: the concepts whose own or children's firing tokens contain it
    text = next(t.strip().lower() for t in (data["vocab"][data["token_row"][r]]
                                            for r, _ in data["concepts"][0]["contexts"]) if t.strip())

    def fires_on(c):
        rows = [r for r, _ in c["contexts"]]
        rows += [r for b in c["children"] for r, _ in data["base"][str(b)]["contexts"]]
        return any(text in data["vocab"][data["token_row"][r]].strip().lower() for r in rows)

    expected = {c["i"] for c in data["concepts"] if fires_on(c)}
    shown = visible_concepts(dom(page_run, tmp_path, f"search={text}"))
    assert data["concepts"][0]["i"] in shown and shown == expected, \
        f"search {text!r} shows {sorted(shown)}, expected {sorted(expected)}"
    nothing = visible_concepts(dom(page_run, tmp_path, "search=zzqqxxnotatoken"))
    assert nothing == set(), f"a search matching nothing still shows {sorted(nothing)}"


def test_plot_links_the_pages_of_the_runs_it_compares(page_run, tmp_path):
    import plot

    runs = plot.find_runs(page_run.parent, {})
    printed = plot.concept_pages(runs, tmp_path)
    page = (page_run / "concepts.html").resolve()
    assert page.as_uri() in printed, f"plot.py does not print the page's URL:\n{printed}"
    written = (tmp_path / "concept_pages.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", written)
    assert [(tmp_path / link).resolve() for link in links] == [page], \
        f"concept_pages.md links {links}, not {page}"
