"""The HTML report end to end on a real SQLite study: content, escaping, errors, comparison, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from test_analysis import ROOT, make_study

from lit_tuning.analysis.report import build_report, main
from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.paths import study_slug

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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


def test_compare_report_lists_each_study(report: dict, tmp_path: Path) -> None:
    root = tmp_path / "results"
    _, storage = make_study(tmp_path, "first", n_complete=5)
    second = optuna.create_study(study_name="second", storage=storage, direction="maximize")
    second.add_trial(optuna.trial.create_trial(value=0.7, user_attrs={"steps": 10, "tokens": 100}))
    assert main(["--compare", "first", "second", "--storage", storage, "--root", str(root)]) == 0
    html = next((root / "reports").glob("compare-*.html")).read_text()
    assert "first" in html and "second" in html and "0.7000" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium")
def test_report_renders_in_chromium(report: dict, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(report["html"].replace("</body>", PROBE + "</body>"))
    command = [
        CHROMIUM,
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
    args += ["--max-steps", "20", f"--tracking.root={tmp_path / 'tracking'}", "--tracking.wandb_mode=disabled"]
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.analysis.confirm", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(root / "data" / "quick" / "confirm.csv")
    assert sorted(zip(table["config"], table["seed"])) == [
        ("base", 0),
        ("base", 1),
        ("rank01_t0000", 0),
        ("rank01_t0000", 1),
    ]
    assert table["value"].between(0, 1).all()


def test_report_on_a_running_study(tmp_path: Path) -> None:
    study, storage = make_study(tmp_path, "live", n_complete=5)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"steps": 0}))
    paths = build_report("live", storage=storage, root=tmp_path / "results", spaces_dir=tmp_path / "s", n_resamples=3)
    assert "5 completed, 3 pruned, 1 failed, 1 running" in paths.html.read_text()
