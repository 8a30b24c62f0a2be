"""HTML report: rendering from a real DuckDB store, escaping, links, and a real headless Chromium."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness_xai.errors import UserError
from factory import explained, make_skipped
from harness_xai.records import Case, Explanation, Faithfulness, GraphRecord, RunRecord, TaskSummary
from harness_xai.report import render_report, task_slug
from harness_xai.report.cli import report_main
from harness_xai.store import Store

SCRIPT_PAYLOAD = "<script>document.title='PWNED'</script>"
IMG_PAYLOAD = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
ODD_TASK = "../evil/<b>Task</b>"
N_LAYERS = 3


def _attributed(task: str, doc_id: int, delta: float, seed: int) -> tuple[Case, Explanation]:
    tokens = ["<s>", "Question", ":", " Who", " said", ' "hi"', " &", " 'yo'", "\n", SCRIPT_PAYLOAD,
              "\t", IMG_PAYLOAD, "\n\n", "Answer", ":"]
    rng = np.random.default_rng(seed)
    rel = rng.normal(size=len(tokens)).astype(np.float32)  # (n_tokens,)
    rel[0] = 9.0  # BOS sink
    rel[5] = 2.5  # strongest push toward the wrong answer
    rel[9] = -2.0  # strongest push toward gold
    layers = rng.normal(size=(N_LAYERS + 1, len(tokens))).astype(np.float32)  # (n_layers+1, n_tokens)
    return explained(
        rel, task=task, doc_id=doc_id, delta=delta, layer_relevance=layers,
        prompt="".join(tokens), pred_index=1, gold_index=0,
        pred_text=f" {IMG_PAYLOAD} & wrong", gold_text=' "gold" & \'right\'', position=len(tokens),
        wrong_token_id=11, gold_token_id=12, wrong_token=" B", gold_token=" A",
        ll_pred=-1.0, ll_gold=-2.0, token_ids=range(100, 100 + len(tokens)), tokens=tokens,
    )


def _skipped(task: str, doc_id: int, reason: str) -> tuple[Case, None]:
    return make_skipped(doc_id, task=task, reason=reason, prompt_hash=f"p{doc_id}",
                        target_hash=f"t{doc_id}", pred_index=2, gold_index=0, pred_text="same",
                        gold_text="same"), None


@pytest.fixture()
def store_db(tmp_path: Path) -> tuple[str, dict]:
    """A DuckDB store with 1 run, 2 tasks, 4 attributed and 3 skipped cases."""
    db = str(tmp_path / "fixture.duckdb")
    run = RunRecord(
        run_key="fixture-run", model="hf", model_args="pretrained=/zoo/tiny,dtype=float32",
        pretrained="/zoo/tiny", revision="step3000", model_type="llama", n_params=12345,
        tasks=["arc_fixture", ODD_TASK], method="attnlrp", lm_eval_version="0.4.13",
        harness_xai_version="0.1.0", created_at=dt.datetime(2026, 11, 24, 8, 0, tzinfo=dt.timezone.utc),
        step=3000,
    )
    cases = {
        "arc_fixture": [_attributed("arc_fixture", 3, 0.5, 1), _attributed("arc_fixture", 1, 2.25, 2),
                        _attributed("arc_fixture", 8, -0.75, 3), _skipped("arc_fixture", 5, "identical_sequences"),
                        _skipped("arc_fixture", 6, "identical_sequences")],
        ODD_TASK: [_attributed(ODD_TASK, 0, 1.0, 4), _skipped(ODD_TASK, 2, "prefix_of_other")],
    }
    ids: dict = {}
    with Store.open(db) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, [
            TaskSummary("arc_fixture", "acc", 0.375, 8, 5, "multiple_choice"),
            TaskSummary(ODD_TASK, "acc", 0.5, 4, 2, "multiple_choice"),
        ])
        for task, items in cases.items():
            for c, ex in items:  # ex None: skipped
                ids[(task, c.doc_id)] = (store.write_case(run_id, c, ex), c, ex)
    return db, {"run_id": run_id, "cases": ids}


class _Collect(HTMLParser):
    """Collects hrefs, heatmap spans (attrs) and table rows of the delta-sorted failure table."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.spans: list[dict[str, str]] = []
        self.title = ""
        self._in_title = False
        self.html_attrs: dict[str, str] = {}
        self.body_attrs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "span" and "data-relevance" in a:
            self.spans.append(a)
        if tag == "title":
            self._in_title = True
        if tag == "html":
            self.html_attrs = a
        if tag == "body":
            self.body_attrs = a

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_render_structure_links_and_escaping(store_db: tuple[str, dict], tmp_path: Path) -> None:
    db, info = store_db
    out = tmp_path / "report"
    index = render_report(db, out)
    assert index == out / "index.html" and index.is_file()
    run_dir = out / f"run-{info['run_id']}"
    expected = {"index.html", f"run-{info['run_id']}/task-arc_fixture.html",
                f"run-{info['run_id']}/task-{task_slug(ODD_TASK)}.html"}
    for (task, doc), (case_id, case, ex) in info["cases"].items():
        if ex is not None:  # explained: stored as attributed
            expected.add(f"run-{info['run_id']}/case-{case_id}.html")
    written = {str(p.relative_to(out)) for p in out.rglob("*.html")}
    assert written == expected  # skipped cases get no page; the odd task name stays inside out/
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))

    # every link resolves to a file that exists, and every #fragment to an id in it
    for page in out.rglob("*.html"):
        for href in _parse(page.read_text("utf-8")).hrefs:
            assert not href.startswith(("http:", "https:", "//", "javascript:")), href
            path, _, fragment = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.is_file(), (page, href)
            if fragment:
                assert f'id="{fragment}"' in target.read_text("utf-8"), (page, href)
    # the shared assets: the only script and stylesheet, loaded relative to the page
    assert (out / "assets" / "report.js").is_file() and (out / "assets" / "report.css").is_file()

    idx = index.read_text("utf-8")
    assert "step3000" in idx and "attnlrp" in idx and "0.4.13" in idx
    assert '<span class="tag">step 3000</span>' in idx
    assert "identical_sequences: 2" in idx and "prefix_of_other: 1" in idx
    assert "&lt;b&gt;Task&lt;/b&gt;" in idx and "<b>Task</b>" not in idx
    assert idx.count("<script") == 1 and '<script src="assets/report.js">' in idx
    assert "script-src 'self'" in idx and "'unsafe-inline'" not in idx.split("script-src")[1][:40]

    case_id, _, _ = info["cases"][("arc_fixture", 1)]
    page = (run_dir / f"case-{case_id}.html").read_text("utf-8")
    assert page.count("<script") == 2 and "<img" not in page  # the JSON data + report.js
    data = page.split('<script type="application/json" id="case-data">')[1].split("</script>")[0]
    assert "<" not in data and ">" not in data and "&" not in data  # \u003c… inside the JSON
    payload = json.loads(data)
    assert SCRIPT_PAYLOAD in payload["tokens"]["text"] and IMG_PAYLOAD in payload["tokens"]["text"]
    assert "&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&#34;document.body" in page
    assert "&#34;gold&#34; &amp; &#39;right&#39;" in page  # gold_text with " & '
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_task_page_sorted_by_delta_desc(store_db: tuple[str, dict], tmp_path: Path) -> None:
    db, info = store_db
    render_report(db, tmp_path / "r")
    html = (tmp_path / "r" / f"run-{info['run_id']}" / "task-arc_fixture.html").read_text("utf-8")
    links = [h for h in _parse(html).hrefs if h.startswith("case-")]
    by_id = {f"case-{cid}.html": ex for cid, _, ex in info["cases"].values()}
    deltas = [by_id[h].delta for h in dict.fromkeys(links)]
    assert deltas == [2.25, 0.5, -0.75]
    # skipped rows are listed with their reason, after the attributed ones
    assert html.index("identical_sequences") > html.index(f'href="{links[-1]}"')


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found: install Debian chromium (apt-get install -y chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _rgb(style: str) -> tuple[int, int, int]:
    m = re.search(r"background-color:\s*rgb\((\d+),\s*(\d+),\s*(\d+)\)", style)
    assert m, style
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_failure_page_in_headless_chromium(store_db: tuple[str, dict], tmp_path: Path) -> None:
    db, info = store_db
    out = tmp_path / "r"
    render_report(db, out)
    case_id, case, ex = info["cases"][("arc_fixture", 1)]
    page = out / f"run-{info['run_id']}" / f"case-{case_id}.html"

    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    p = _parse(dom)
    assert p.html_attrs.get("data-js") == "ready"  # the page's own script ran ...
    assert "PWNED" not in p.title and "doc 1" in p.title  # ... the injected ones did not
    assert "data-pwned" not in p.body_attrs

    # one heatmap span per stored token, in position order, with the stored values
    assert [int(s["data-position"]) for s in p.spans] == list(range(len(case.tokens)))
    got = np.array([float(s["data-relevance"]) for s in p.spans])
    np.testing.assert_allclose(got, ex.token_relevance.astype(np.float64), rtol=0, atol=1e-12)
    assert all(f"{float(ex.token_relevance[i]):+.6g}" in s["title"] for i, s in enumerate(p.spans))

    pos_r, pos_g, pos_b = _rgb(p.spans[5]["style"])  # +2.5: the scale max once BOS is excluded
    neg_r, neg_g, neg_b = _rgb(p.spans[9]["style"])  # -2.0
    assert pos_r > pos_b + 100 and pos_r > pos_g + 100  # red
    assert neg_b > neg_r + 100  # blue
    zero_ish = min(range(1, len(case.tokens)), key=lambda i: abs(float(ex.token_relevance[i])))
    assert min(_rgb(p.spans[zero_ish]["style"])) > min(pos_r, pos_g, pos_b)  # weaker = paler

    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()], tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_report_main_prints_index_and_rerenders(store_db: tuple[str, dict], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    db, _ = store_db
    out = tmp_path / "r"
    assert report_main(["--db", db, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    (out / "stale.html").write_text("old")
    assert report_main(["--db", db, "--out", str(out)]) == 0  # a previous report is replaced
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".harness-xai")] == []


def test_report_main_missing_db(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with pytest.raises(UserError, match="not found"):
        report_main(["--db", str(tmp_path / "nope.duckdb"), "--out", str(out)])
    assert not out.exists() and not (tmp_path / "nope.duckdb").exists()


def test_not_a_store(tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(UserError, match="not a harness-xai"):
        render_report(str(db), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["other.duckdb"]  # no temp dirs left behind


def test_refuses_foreign_out_dir(store_db: tuple[str, dict], tmp_path: Path) -> None:
    db, _ = store_db
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a harness-xai report"):
        render_report(db, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_task_slug_is_safe() -> None:
    assert task_slug("arc_easy") == "arc_easy"
    for name in ["../../etc/passwd", "a/b", "..", "<b>", "ARC_Easy", "x" * 300, "\u00e9t\u00e9", ""]:
        slug = task_slug(name)
        assert re.fullmatch(r"[a-z0-9_-][a-z0-9._-]*", slug) and ".." not in slug, (name, slug)
        assert len(slug) <= 90
    assert task_slug("ARC_Easy") != task_slug("arc_easy")


def _rich_case() -> tuple[Case, Explanation]:
    """An attributed case carrying every optional result: segments, states, heads, curve, graph."""
    case, ex = _attributed("arc_fixture", 42, 1.5, 7)
    n = len(case.tokens)
    rng = np.random.default_rng(11)
    case = replace(
        case, segments=("special",) + ("fewshot",) * 4 + ("question",) * 6 + ("option",) * 2 + ("question",) * 2,
        segment_index=(None,) + (0,) * 4 + (None,) * 6 + (0, 1) + (None,) * 2)
    state_relevance = {k: rng.normal(size=(N_LAYERS, n)).astype(np.float32) for k in ("mid", "attn", "mlp")}
    head_relevance = rng.normal(size=(N_LAYERS, 4, n)).astype(np.float32)
    faithfulness = Faithfulness(
        fractions=[0.1, 0.2, 0.5], n_removed=[2, 3, 8], delta_relevance=[0.4, -0.2, -1.0],
        delta_random=[1.3, 1.2, 0.9], aopc=0.9, aopc_random=0.2, baseline_token_id=0)
    src = np.array([0, 0, 1, 2], dtype=np.int32)
    graph = GraphRecord(
        node_layers=["emb", "1", "2", "3"],
        node_relevance=rng.normal(size=(N_LAYERS + 1, n)).astype(np.float32),
        source_layer=src, source_position=np.array([3, 5, 5, 9], dtype=np.int32),
        target_layer=src + 1, target_position=np.array([5, 9, 9, 14], dtype=np.int32),
        weight=np.array([0.7, -0.3, 1.1, 0.5], dtype=np.float32),
        params={"mass": 0.85}, metrics={"n_edges": 4, "mass_kept": 0.9, "formation_layer": 2})
    return case, replace(ex, state_relevance=state_relevance, head_relevance=head_relevance,
                         faithfulness=faithfulness, graph=graph)


def test_failure_page_shows_internals_in_chromium(store_db: tuple[str, dict], tmp_path: Path) -> None:
    db, info = store_db
    case, ex = _rich_case()
    with Store.open(db) as store:
        case_id = store.write_case(info["run_id"], case, ex)
    out = tmp_path / "r"
    render_report(db, out)
    page = out / f"run-{info['run_id']}" / f"case-{case_id}.html"
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    assert 'data-js="ready"' in dom
    for section in ("state-mid", "state-attn", "state-mlp", "heads", "faithfulness", "graph",
                    "segments"):
        assert f'id="{section}"' in dom, section
    n = len(case.tokens)
    # one rectangle per (block, position) of each state, per (block, head) of the head grid
    mid = dom.split('id="state-mid"')[1].split("</svg>")[0]
    assert mid.count("<rect") == N_LAYERS * n
    heads = dom.split('id="heads"')[1].split("</svg>")[0]
    assert heads.count("<rect") == N_LAYERS * 4
    head_sum = float(ex.head_relevance[1, 2].sum())
    assert f"block 2, head 2: {head_sum:+.6g}" in heads
    graph = dom.split('id="graph"')[1].split("</svg>")[0]
    assert graph.count('class="edge"') == 4 and 'data-visible-edges="4"' in graph
    titles = re.findall(r'class="edge"[^>]*><title>([^<]*)</title>', graph)
    assert any(t.startswith('emb @ position 3 " Who" → 1 @ position 5 " \\"hi\\"": +0.7 (edge weight')
               for t in titles), titles
    faith = dom.split('id="faithfulness"')[1].split("</svg>")[0]
    assert faith.count("<polyline") == 2 and faith.count("<circle") == 4  # Δℓ₀ + 3 steps
    # segment marks: special, fewshot 0, question, option 0, option 1, question again
    marks = re.findall(r'class="seg-mark seg-(\w+)"[^>]*>([^<]*)<', dom)
    assert [m[1] for m in marks] == ["special", "fewshot 0", "question", "option 0", "option 1",
                                     "question"]
    seg_rows = dom.split('id="segments"')[1].split("</table>")[0]
    q_sum = float(ex.token_relevance[[5, 6, 7, 8, 9, 10, 13, 14]].sum())
    assert f"{q_sum:+.4g}" in seg_rows
    shot = tmp_path / "internals.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()], tmp_path)
    assert len(shot.read_bytes()) > 30_000


def test_deletion_curve_has_axis_titles_and_round_ticks() -> None:
    from harness_xai.report.figures import curve_chart

    c = curve_chart([0.1, 0.2, 0.5], [2.43, -0.892, 0.4], [4.09, 3.1, 2.2], 4.2)
    assert c["x_title"] and c["y_title"].startswith("Δℓ")
    values = [float(t["text"]) for t in c["y_ticks"]]
    step = values[1] - values[0]
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert any(abs(mantissa - m) < 1e-9 for m in (1, 2, 2.5, 5))  # a 1-2-2.5-5 step
    assert all(abs(v / step - round(v / step)) < 1e-9 for v in values)  # multiples of it
    assert values[0] <= -0.892 and values[-1] >= 4.2  # the axis ends on ticks around the data
    assert [t["text"] for t in c["x_ticks"]] == ["0%", "10%", "20%", "30%", "40%", "50%"]


def test_byte_pieces_merge_to_the_decoded_text() -> None:
    """Oracle: a byte-level BPE tokenizer splits multi-byte characters into pieces that decode
    alone to U+FFFD; the merged labels, joined, are the text the tokenizer decodes as a whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from harness_xai.report.tokens import display_tokens, visible

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the key is at the door " * 20], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    text = "Q: crème brûlée costs €2.25 — naïve 日本語 ok"
    ids = tok.encode(text).ids
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # the case the merge exists for
    labels, group = display_tokens(pieces, ["unrelated", text])
    assert not any("\ufffd" in label for label in labels)
    assert "".join(labels).replace("␣", " ") == tok.decode(ids)
    for k, g in enumerate(group):  # a group is a run of pieces; only its first shows a label
        assert g <= k and (g == k or labels[k] == "")
    unresolved, _ = display_tokens(pieces, [])  # no stored text to align with: visible marks
    assert not any("\ufffd" in label for label in unresolved) and any("▯" in l for l in unresolved)
    assert visible("  ") == "␣␣" and visible("a\nb") == "a↵\nb" and visible("\t") == "⇥\t"
    assert visible("\x00\x1b") == "␀␛" and visible("") == "∅" and visible(" the") == " the"


def test_summary_ranks_are_the_token_ranks_view() -> None:
    from harness_xai.report.summary import ranks

    rel = np.array([0.5, np.nan, -1.0, 0.5, 2.0, 0.0])
    pos = np.arange(6)
    # relevance descending, NULL last, ties by position (the view's ORDER BY)
    brute = sorted(range(6), key=lambda i: (np.isnan(rel[i]), -np.nan_to_num(rel[i]), pos[i]))
    assert ranks(rel, pos).tolist() == [brute.index(i) + 1 for i in range(6)]


def test_user_templates_in_reports_override_the_packaged_ones(store_db: tuple[str, dict],
                                                              tmp_path: Path, monkeypatch) -> None:
    """``reports/templates/<name>`` (of the working directory) wins over the packaged template
    of that name, the others stay packaged; ``report`` writes into ``reports/out`` by default;
    a ``--templates`` that is not a folder is one line."""
    from harness_xai.errors import UserError
    from harness_xai.report.cli import report_main
    from harness_xai.report.render import render_report

    db, _ = store_db
    work = tmp_path / "work"
    (work / "reports" / "templates").mkdir(parents=True)
    packaged = Path(__file__).resolve().parents[1] / "harness_xai/report/templates/base.html"
    marker = "<!-- our lab's footer -->"
    (work / "reports" / "templates" / "base.html").write_text(
        packaged.read_text("utf-8").replace("</body>", f"{marker}</body>"), "utf-8")
    monkeypatch.chdir(work)
    assert report_main(["--db", db]) == 0
    out = work / "reports" / "out"
    pages = [p for p in out.glob("**/*.html")]
    assert pages and all(marker in p.read_text("utf-8") for p in pages)  # every page extends base
    plain = render_report(db, tmp_path / "plain", templates=tmp_path / "empty-but-real"
                          ) if (tmp_path / "empty-but-real").mkdir() is None else None
    assert marker not in plain.read_text("utf-8")  # an empty override folder: all packaged
    with pytest.raises(UserError, match="--templates .* is not a folder"):
        render_report(db, tmp_path / "x", templates=tmp_path / "missing")
