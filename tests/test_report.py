"""The HTML report end to end on real SQLite studies (every legal shape, minimised too): content, escaping, errors."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from analysis_helpers import LEGAL_KINDS, ROOT, legal_study, make_study
from sweep_helpers import parent_of, processes_naming
from web_helpers import chromium

from lit_tuning.analysis.confirm import Job, freeze, run_jobs
from lit_tuning.analysis.report import ReportError, build_report, main
from lit_tuning.experiment.config import Experiment
from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.paths import BASE_CONFIG, study_slug

HOSTILE = "<script>alert(1)</script>"
ARTIFACTS = ROOT / "tests" / "artifacts"
# Appended to a copy of the report only: records, after load, which images decoded and what text is visible.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {figure: img.dataset.figure, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth};
  });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images, text: document.body.innerText, alerted: !!window.__alerted});
  document.body.appendChild(out);
});
window.alert = function () { window.__alerted = true; };
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One report of a hostile-named study with a confirm table, built once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("report")
    study, storage = make_study(tmp_path, HOSTILE)
    root = tmp_path / "results"
    confirm = pd.DataFrame(
        {"config": ["rank01_t0012"] * 3 + ["rank02_t0005"] * 3 + ["base"] * 3, "seed": [0, 1, 2] * 3,
         "value": [0.60, 0.61, 0.62, 0.60, 0.62, 0.63, 0.50, 0.52, 0.51]}
    )  # fmt: skip
    confirm_path = root / "data" / study_slug(HOSTILE) / "confirm.csv"
    confirm_path.parent.mkdir(parents=True)
    confirm.to_csv(confirm_path, index=False)
    paths = build_report(HOSTILE, storage=storage, root=root, spaces_dir=tmp_path / "spaces", n_resamples=5)
    return {"paths": paths, "html": paths.html.read_text(), "study": study, "storage": storage, "tmp": tmp_path}


def test_report_escapes_the_study_name(report: dict) -> None:
    html = report["html"]
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert report["paths"].html.name == f"{study_slug(HOSTILE)}.html"
    assert "<" not in report["paths"].html.name and "<" not in str(report["paths"].next_space)


def test_report_summary_numbers_come_from_the_study(report: dict) -> None:
    html, study = report["html"], report["study"]
    best = study.best_trial
    assert re.search(rf'id="best-value">{best.value:.4f}<', html)
    assert re.search(r'id="trial-count">28<', html)
    assert "24 completed, 3 pruned, 1 failed" in html
    assert re.search(r'id="steps-saved">2,400<', html)  # 3 pruned trials at 100/200/300 of 1,000 steps
    assert html.count('src="data:image/png;base64,') == 8  # 7 study figures + the seed re-runs
    summary = json.loads((report["paths"].data_dir / "summary.json").read_text())
    assert summary["summary"]["best_number"] == best.number


def test_report_states_significance_and_recommends(report: dict) -> None:
    html = report["html"]
    # rank01 (0.61) vs rank02 (0.6167): indistinguishable; either vs base (0.51): significant.
    assert "statistically indistinguishable" in html and 'id="indistinguishable"' in html
    assert "is better" in html and "Welch" in html
    assert "Use " in html and "95% CI" in html
    next_space = load_search_space(report["paths"].next_space)
    lr = next_space.parameters["model.learning_rate"]
    assert 1e-4 < lr.low < lr.high < 1e-2 and "Narrow model.learning_rate" in html
    assert yaml.safe_load(report["paths"].next_space.read_text())["name"] == "synthetic-next"


def test_report_tables_are_written(report: dict) -> None:
    data = report["paths"].data_dir
    trials = pd.read_csv(data / "report_trials.csv")
    assert len(trials) == 28 and trials["pareto"].sum() >= 1
    assert set(pd.read_csv(data / "importance.csv")["param"]) == {
        "model.learning_rate",
        "model.lora_r",
        "model.lora_dropout",
    }
    assert pd.read_csv(data / "confirm_summary.csv")["config"].iloc[-1] == "base"


def test_cli_refuses_unknown_study_and_missing_storage(
    report: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--study", "nope", "--storage", report["storage"], "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "'nope'" in error and "allowed:" in error and "&lt;" not in error
    missing = tmp_path / "none.db"
    assert main(["--storage", f"sqlite:///{missing}", "--root", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err and not missing.exists()
    assert not (tmp_path / "reports").exists()


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of the table with this id (the rendered text, not the page's scripts)."""
    table = re.search(rf'<table id="{table_id}".*?<tbody>(.*?)</tbody>', html, re.S)
    assert table, f"no table {table_id!r} in the page"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows
    ]


def test_compare_report_lists_each_study(report: dict, tmp_path: Path) -> None:
    root = tmp_path / "results"
    first, storage = make_study(tmp_path, "first", n_complete=5)
    second = optuna.create_study(study_name="second", storage=storage, direction="minimize")
    for value in (0.9, 0.7, 0.8):
        second.add_trial(optuna.trial.create_trial(value=value, user_attrs={"steps": 10, "tokens": 100}))
    assert main(["--compare", "first", "second", "--storage", storage, "--root", str(root)]) == 0
    html = next((root / "reports").glob("compare-*.html")).read_text()
    rows = {row[0]: row for row in table_rows(html, "comparison")}
    assert set(rows) == {"first", "second"}
    # study, direction, trials, completed, pruned, failed, best value, best trial, base, compute, saved
    assert rows["first"][1:8] == ["maximize", "9", "5", "3", "1", f"{first.best_trial.value:.4f}",
                                  str(first.best_trial.number)]  # fmt: skip
    assert rows["second"][1:8] == ["minimize", "3", "3", "0", "0", "0.7000", "1"]  # the lowest value is the best


def test_report_renders_in_chromium(report: dict, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(report["html"].replace("</body>", PROBE + "</body>"))
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run([*command, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"probe missing from Chromium's DOM; stderr: {dom.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert len(probe["images"]) == 8 and all(image["ok"] for image in probe["images"]), probe["images"]
    assert not probe["alerted"]  # the hostile study name did not run
    text = probe["text"]
    assert HOSTILE in text  # shown as text
    assert f"{report['study'].best_trial.value:.4f}" in text and "24 completed, 3 pruned, 1 failed" in text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [*command, "--window-size=1280,2400", f"--screenshot={shot}", report["paths"].html.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_confirm_reruns_configs_over_seeds(tmp_path: Path, micro_model_dir: Path) -> None:
    """Real fits of the micro model: one rank file and the quick space's base config, two seeds each."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="quick", storage=storage, direction="maximize")
    study.set_user_attr("search_space", str(ROOT / "configs/hyperparameters/search_spaces/quick.yaml"))
    study.add_trial(optuna.trial.create_trial(value=0.1))
    root = tmp_path / "results"
    rank = root / "configs" / "quick" / "rank01_t0000.yaml"
    rank.parent.mkdir(parents=True)
    rank.write_text(
        "model: {model_name_or_path: 'embedded:micro', lora_r: 4, learning_rate: 0.005}\n"
        "data: {num_words: 300}\ntrainer: {max_steps: 20, val_check_interval: 10, enable_progress_bar: false}\n"
    )
    args = ["--study", "quick", "--storage", storage, "--root", str(root), "--top-k", "1", "--seeds", "2"]
    args += ["--max-steps", "20", "--workers", "2"]
    args += [f"--tracking.root={tmp_path / 'tracking'}", "--tracking.wandb_mode=disabled"]
    log = tmp_path / "confirm.log"
    with log.open("w") as output:
        confirm = subprocess.Popen(
            [sys.executable, "-m", "lit_tuning.analysis.confirm", *args], cwd=ROOT, stdout=output, stderr=output
        )
    # Two workers: two fits run at once and never more (each fit lives for seconds: imports, then its run).
    fits_at_once = set()
    while confirm.poll() is None:
        # Confirm's own children: a fit's forked helper (MLflow runs git) shares its command line for a moment.
        fits = [pid for pid in processes_naming("lit_tuning\0fit", str(root)) if parent_of(pid) == confirm.pid]
        fits_at_once.add(len(fits))
        time.sleep(0.05)
    assert confirm.returncode == 0, log.read_text()[-3000:]
    assert max(fits_at_once) == 2, fits_at_once
    table = pd.read_csv(root / "data" / "quick" / "confirm.csv")
    assert sorted(zip(table["config"], table["seed"])) == [
        ("base", 0),
        ("base", 1),
        ("rank01_t0000", 0),
        ("rank01_t0000", 1),
    ]
    assert table["value"].between(0, 1).all()
    for row in table.itertuples():  # each run was made with its own seed, as its saved config shows
        saved = yaml.safe_load((Path(row.run_dir) / "config.yaml").read_text())
        assert saved["seed_everything"] == row.seed, row.run_dir


MICRO_CONFIRM = {
    "model.model_name_or_path": "embedded:micro",
    "data.num_words": 300,
    "trainer.max_steps": 20,
    "trainer.val_check_interval": 10,
}


def test_a_failed_confirm_run_stops_the_queue_and_keeps_the_finished_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture, micro_model_dir: Path
) -> None:
    root = tmp_path / "results"
    table = root / "data" / "s" / "confirm.csv"
    table.parent.mkdir(parents=True)
    table.write_text("config,seed,value,run_dir\nbase,0,0.5,/x\n")  # a finished run from an earlier confirm
    micro = Experiment((BASE_CONFIG,), MICRO_CONFIRM)
    jobs = [Job("base", micro, 0), Job("bad", micro, 0), Job("bad", micro, 1)]
    # A config that composes but whose fit fails: an extra fit argument refused by `fit` only.
    with pytest.raises(ReportError, match=r"fit --config \S+/bad\.yaml --seed_everything 0 .* failed \(exit 2\)"):
        run_jobs("s", jobs, root=root, workers=1, extra=("--model.lora_r", "0"))
    assert table.read_text() == "config,seed,value,run_dir\nbase,0,0.5,/x\n"
    assert "confirm: bad seed 0" in capsys.readouterr().out.splitlines()[-1], "the second bad job never started"


def test_a_config_that_fit_would_refuse_stops_confirm_before_any_run_and_writes_nothing(
    tmp_path: Path, micro_model_dir: Path
) -> None:
    root = tmp_path / "results"
    good = Experiment((BASE_CONFIG,), MICRO_CONFIRM)
    bad = Experiment((BASE_CONFIG,), {**MICRO_CONFIRM, "model.lora_r": 0})
    with pytest.raises(ReportError, match=r"config 'bad' is refused before any run: .*model\.lora_r"):
        run_jobs("s", [Job("good", good, 0), Job("bad", bad, 0)], root=root, workers=1)
    assert not root.exists()


def test_every_seed_of_a_config_reads_it_as_confirm_first_composed_it(tmp_path: Path, micro_model_dir: Path) -> None:
    """A file edited while confirm runs reaches no later seed; a later confirm refuses the changed config."""
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "configs/base.yaml").read_text())
    folder, table = tmp_path / "configs", tmp_path / "confirm.csv"
    job = Job("base", Experiment((str(base),), MICRO_CONFIRM), 0)
    (frozen,) = freeze([job], folder, table).values()
    base.write_text(base.read_text().replace("warmup_steps: 50", "warmup_steps: 0"))
    assert yaml.safe_load(frozen.read_text())["model"]["warmup_steps"] == 50
    with pytest.raises(
        ReportError, match=r"config 'base' composes to other values .*model\.warmup_steps: 50 then, 0 now"
    ):
        freeze([job], folder, table)
    base.write_text(base.read_text().replace("warmup_steps: 0", "warmup_steps: 50"))
    assert freeze([job], folder, table) == {"base": frozen}  # restored: the frozen file is the config again


def test_report_on_a_running_study(tmp_path: Path) -> None:
    study, storage = make_study(tmp_path, "live", n_complete=5)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"steps": 0}))
    paths = build_report("live", storage=storage, root=tmp_path / "results", spaces_dir=tmp_path / "s", n_resamples=3)
    assert "5 completed, 3 pruned, 1 failed, 1 running" in paths.html.read_text()


def test_report_withholds_an_interaction_from_thin_cells(report: dict) -> None:
    html = report["html"]
    # 24 trials over 3 x 3 cells leave some cells with 0-2 trials: the strongest pair is named but not claimed.
    text = re.search(r'<p id="interaction">(.*?)</p>', html, re.S).group(1)
    assert text.startswith("No interaction is claimed") and "bootstrap interval" in text and "permutation p" in text
    assert "at least 3 trials in every cell" in text


# What the report must say (in its caveats, HTML-escaped) for each legal but awkward study.
EXPECTED_CAVEATS = {
    "ties_all": ["there is no variance to explain", "there is no variance to split"],
    "ties_top": [],
    "single": ["Only one completed trial", "importance needs at least 4 completed trials"],
    "all_pruned": ["No completed trial with a finite value (0 completed, 4 pruned, 0 failed)"],
    "all_failed": ["No completed trial with a finite value (0 completed, 0 pruned, 3 failed)"],
    "one_param": ["Interaction: not estimated"],
    "categorical": [],
    "nonfinite": ["Trial(s) 0, 1 completed with a non-finite value (±inf)", "non-finite value are left out"],
}


@pytest.mark.parametrize("kind", LEGAL_KINDS)
def test_every_legal_study_gets_a_report(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study, storage = legal_study(tmp_path, kind)
    root = tmp_path / "results"
    args = ["--study", kind, "--storage", storage, "--root", str(root), "--spaces-dir", str(tmp_path / "spaces")]
    assert main([*args, "--resamples", "2"]) == 0, capsys.readouterr().err
    html = (root / "reports" / f"{kind}.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 7 and all(base64.b64decode(image)[:4] == b"\x89PNG" for image in images)
    caveats = " ".join(re.findall(r"<li>(.*?)</li>", re.search(r'<ul id="caveats">(.*?)</ul>', html, re.S).group(1)))
    for expected in EXPECTED_CAVEATS[kind]:
        assert expected in caveats, caveats
    ranked = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    if ranked:
        best = (min if kind == "minimize" else max)(ranked, key=lambda t: t.value)
        assert re.search(rf'id="best-value">{best.value:.4f}<', html), kind
    else:
        assert 'id="best-value">–<' in html and "No recommendation yet" in html


def test_report_of_a_minimised_study_ranks_lower_first(tmp_path: Path) -> None:
    study, storage = make_study(tmp_path, "loss", minimize=True)
    root = tmp_path / "results"
    confirm = pd.DataFrame(
        {"config": ["rank01_t0003"] * 3 + ["base"] * 3, "seed": [0, 1, 2] * 2,
         "value": [0.40, 0.41, 0.39, 0.55, 0.56, 0.54]}
    )  # fmt: skip
    (root / "data" / "loss").mkdir(parents=True)
    confirm.to_csv(root / "data" / "loss" / "confirm.csv", index=False)
    paths = build_report("loss", storage=storage, root=root, spaces_dir=tmp_path / "spaces", n_resamples=3)
    html = paths.html.read_text()
    assert re.search(rf'id="best-value">{study.best_trial.value:.4f}<', html) and "(lower is better)" in html
    assert "Reference accuracies (chance, best constant letter) are not drawn: the objective is val/loss" in html
    assert (
        json.loads((paths.data_dir / "summary.json").read_text())["summary"]["best_number"] == study.best_trial.number
    )
    assert "rank01_t0003 is better" in html and "expected val/loss 0.4000" in html
    assert table_rows(html, "confirm")[0][0] == "rank01_t0003"
    lr = load_search_space(paths.next_space).parameters["model.learning_rate"]
    assert lr.low <= study.best_trial.params["model.learning_rate"] <= lr.high and lr.high / lr.low < 50
    trials = pd.read_csv(paths.data_dir / "report_trials.csv")
    assert trials["best_so_far"].dropna().is_monotonic_decreasing
    assert study.best_trial.number in set(trials.loc[trials["pareto"], "number"])
