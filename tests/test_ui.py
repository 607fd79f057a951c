"""The MLflow UI over the store sweeps write: `trainlib ui` / `make ui`, and what a person sees in it.

The end-to-end tests run a small sweep and a small throughput report into a temporary store, start
`trainlib ui` on a free port and drive Debian's Chromium with Playwright. Screenshots go to a temporary
folder; TRAINLIB_SCREENSHOTS_DIR=docs/screenshots also writes compressed copies there (docs/ui.md uses them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from trainlib.cli import main
from trainlib.stores import mlruns_dir, resolve_tracking_uri
from trainlib.ui import experiment_address, latest_study, ui_address, ui_command

REPO = Path(__file__).resolve().parents[1]
TRAINLIB = Path(sys.executable).with_name("trainlib")  # the console script make ui runs
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make system-deps); Playwright's download is not used
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Local UI settings a person sets once: the assistant panel closed, the "Model training" view of experiments.
UI_SETTINGS = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.workflowType_v1": '"machine_learning"',
}
VIEWPORT = {"width": 1280, "height": 860}
STUDY = "smoke"
PARETO_STUDY = "smoke-pareto"
SEARCHED_PARAMS = ("lr", "batch_size", "optimizer")


# ---- trainlib ui / make ui, without a browser ----


@pytest.fixture
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TRAINLIB_MLRUNS_DIR pointing at a folder that does not exist yet; no tracking URI in the environment."""
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "mlruns"


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def exit_code(argv: list[str]) -> int:
    """Run the trainlib CLI in this process; its exit status."""
    try:
        main(argv)
    except SystemExit as done:
        return done.code or 0
    return 0


def test_ui_serves_the_store_sweeps_write_on_localhost(empty_store: Path) -> None:
    command, uri = ui_command("127.0.0.1", 5000)

    assert uri == resolve_tracking_uri() == f"sqlite:///{empty_store / 'mlflow.db'}"
    assert option(command, "--backend-store-uri") == uri
    assert option(command, "--artifacts-destination") == str(mlruns_dir() / "artifacts")
    assert option(command, "--host") == "127.0.0.1"
    assert option(command, "--port") == "5000"


def test_ui_dry_run_prints_the_address_and_creates_nothing(empty_store: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["ui", "--dry-run", "--port", "5123"]) == 0

    out = capsys.readouterr().out
    assert "no study there yet (make sweep): http://127.0.0.1:5123" in out
    assert f"--backend-store-uri sqlite:///{empty_store / 'mlflow.db'}" in out
    assert not empty_store.exists()


def test_ui_on_every_interface_only_when_asked(empty_store: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["ui", "--dry-run", "--host", "0.0.0.0"]) == 0

    out = capsys.readouterr().out
    assert "--host 0.0.0.0" in out
    assert "http://127.0.0.1:5000" in out  # the address to open on this machine
    assert "listening on every interface" in out


def test_ui_refuses_a_tracking_server_uri(empty_store: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["ui", "--dry-run", "--tracking-uri", "http://user:secret@tracking:5000"]) == 2
    err = capsys.readouterr().err
    assert "serves its own UI" in err
    assert "secret" not in err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("variables", "expected"),
    [([], "--host '127.0.0.1' --port '5000'"), (["PORT=5123", "HOST=0.0.0.0"], "--host '0.0.0.0' --port '5123'")],
    ids=["defaults", "overrides"],
)
def test_make_ui_runs_trainlib_ui(variables: list[str], expected: str) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "ui", *variables],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    commands = [line for line in result.stdout.splitlines() if "trainlib ui" in line]
    assert len(commands) == 1 and commands[0].endswith(f"trainlib ui {expected}"), result.stdout


def test_latest_study_is_the_study_whose_parent_run_started_last(empty_store: Path) -> None:
    empty_store.mkdir()
    uri = resolve_tracking_uri()
    client = MlflowClient(uri)
    for name, role in (("older", "study"), ("newer", "study"), ("throughput", "bench")):
        experiment_id = client.create_experiment(name)
        client.create_run(experiment_id, run_name=name, tags={"trainlib.role": role})
        time.sleep(0.01)

    name, experiment_id = latest_study(uri)

    assert name == "newer"
    assert client.get_experiment(experiment_id).name == "newer"
    assert experiment_address("http://127.0.0.1:5000", experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )
    assert ui_address("::", 5001) == "http://127.0.0.1:5001"


# ---- end to end: a sweep and a throughput report in a temporary store, the UI, Chromium ----


@dataclass(frozen=True)
class Store:
    """A temporary store holding the smoke study and one throughput bench run, and what MLflow says it holds."""

    env: dict[str, str]
    client: MlflowClient
    study_experiment_id: str
    parent_run_id: str
    trials: dict[str, object]  # run name -> mlflow Run
    throughput_experiment_id: str
    bench_parent_name: str
    cases: dict[str, object]  # run name -> mlflow Run
    pareto_experiment_id: str  # a two-objective study (val_accuracy, train_seconds) beside the smoke study
    pareto_parent_run_id: str
    pareto_trials: dict[str, object]  # run name -> mlflow Run


def bench_json(path: Path) -> Path:
    """A small pytest-benchmark file shaped like bench/'s output (sample timings, not measurements)."""
    cases = []
    for workload in ("in_memory", "on_the_fly"):
        for loader in ("torch", "trainlib"):
            for workers in (0, 2):
                median = (0.4 if workload == "in_memory" else 0.9) / (1 + 0.6 * workers)
                median /= 1.3 if loader == "trainlib" else 1.0
                extra_info = {
                    "workload": workload,
                    "device": "cpu",
                    "device_name": "cpu",
                    "loader": loader,
                    "num_workers": workers,
                    "memory": "pageable",
                    "batch_size": 128,
                    "dataset_size": 4000,
                }
                cases.append(
                    {
                        "name": f"test_epoch_throughput[cpu-{workload}-{loader}_loader-{workers}_workers]",
                        "group": workload,
                        "extra_info": extra_info,
                        "stats": benchmark_stats([median * 0.96, median, median * 1.05]),
                    }
                )
    document = {
        "machine_info": {"node": "test", "cpu_count": 2},
        "commit_info": {"id": "0" * 40, "dirty": False},
        "datetime": "2026-01-01T00:00:00",
        "version": "5.1.0",
        "benchmarks": cases,
    }
    path.write_text(json.dumps(document))
    return path


def benchmark_stats(seconds: list[float]) -> dict[str, object]:
    """pytest-benchmark's "stats" record of one case's round times."""
    q1, median, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return {
        "min": min(seconds),
        "max": max(seconds),
        "mean": statistics.fmean(seconds),
        "stddev": statistics.stdev(seconds),
        "rounds": len(seconds),
        "median": median,
        "iqr": q3 - q1,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": 0,
        "stddev_outliers": 0,
        "outliers": "0;0",
        "ld15iqr": min(seconds),
        "hd15iqr": max(seconds),
        "ops": 1 / statistics.fmean(seconds),
        "total": sum(seconds),
        "iterations": 1,
        "data": seconds,
    }


def run_trainlib(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(TRAINLIB), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """`trainlib sweep experiments/smoke.toml` and `trainlib bench-report` into a fresh TRAINLIB_MLRUNS_DIR."""
    root = tmp_path_factory.mktemp("ui-store")
    env = {
        key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "TRAINLIB_OPTUNA_STORAGE")
    }
    env["TRAINLIB_MLRUNS_DIR"] = str(root / "mlruns")
    pareto = root / "pareto.toml"  # first: the smoke study stays the latest one, which trainlib ui points at
    one_objective = 'direction = "maximize"\nmetric = "val_accuracy"'
    two = 'objectives = [{ metric = "val_accuracy" }, { metric = "train_seconds" }]\ntarget_accuracy = 0.5'
    pareto.write_text((REPO / "experiments" / "smoke.toml").read_text().replace(one_objective, two))
    run_trainlib(["sweep", str(pareto), "--no-progress", "--study-name", PARETO_STUDY], env)
    run_trainlib(["sweep", "experiments/smoke.toml", "--no-progress"], env)
    run_trainlib(["bench-report", str(bench_json(root / "bench.json")), "--out-dir", str(root / "report")], env)

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    study = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([study.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("trainlib.role") == "study"]
    throughput = client.get_experiment_by_name("throughput")
    bench_runs = client.search_runs([throughput.experiment_id])
    (bench_parent,) = [run for run in bench_runs if run.data.tags.get("trainlib.role") == "bench"]
    pareto_study = client.get_experiment_by_name(PARETO_STUDY)
    pareto_runs = client.search_runs([pareto_study.experiment_id])
    (pareto_parent,) = [run for run in pareto_runs if run.data.tags.get("trainlib.role") == "study"]
    return Store(
        env=env,
        client=client,
        study_experiment_id=study.experiment_id,
        parent_run_id=parent.info.run_id,
        trials={run.info.run_name: run for run in runs if run.data.tags.get("trainlib.role") == "trial"},
        throughput_experiment_id=throughput.experiment_id,
        bench_parent_name=bench_parent.info.run_name,
        cases={run.info.run_name: run for run in bench_runs if run.data.tags.get("trainlib.role") == "bench-case"},
        pareto_experiment_id=pareto_study.experiment_id,
        pareto_parent_run_id=pareto_parent.info.run_id,
        pareto_trials={run.info.run_name: run for run in pareto_runs if run.data.tags.get("trainlib.role") == "trial"},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Ui:
    port: int
    base: str
    printed_address: str


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on ``port`` (Linux: /proc/net/tcp)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        host, hex_port = fields[1].split(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return addresses


@pytest.fixture(scope="module")
def ui(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Ui:
    """`trainlib ui --port N` (what make ui runs) on the store, until the module's tests are done."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui-log") / "ui.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(TRAINLIB), "ui", "--port", str(port)],
            cwd=REPO,
            env=store.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # mlflow server starts uvicorn workers: stop the whole group
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # only catches a hang: a loaded machine starts the UI slowly
        while not _healthy(base):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the UI did not answer within 600 s:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        printed = re.search(rf"latest study '{STUDY}': (\S+)", log_path.read_text())
        assert printed, log_path.read_text()[-3000:]
        yield Ui(port=port, base=base, printed_address=printed.group(1))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from /usr/bin/chromium."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run make system-deps (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, settings: dict[str, str]):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(
        "".join(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)});" for key, value in settings.items())
    )
    page = context.new_page()
    page.set_default_timeout(120_000)  # generous: only catches a hang
    return page


@pytest.fixture(scope="module")
def page(browser):
    page = new_page(browser, UI_SETTINGS)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory):
    """save(target, name): a screenshot in a temporary folder, and a compressed copy in $TRAINLIB_SCREENSHOTS_DIR."""
    folder = tmp_path_factory.mktemp("screenshots")
    published = os.environ.get("TRAINLIB_SCREENSHOTS_DIR")

    def save(target, name: str) -> Path:
        path = folder / name
        target.screenshot(path=path)
        if published:
            from PIL import Image

            Path(published).mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                image.convert("RGB").quantize(colors=128).save(Path(published) / name, optimize=True)
        return path

    return save


def expand(page, parent_name: str, child_name: str) -> None:
    """Open a parent run's child runs in the runs table (a no-op where they are open already)."""
    parent_cell = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name=parent_name, exact=True))
    parent_cell.wait_for()
    child = page.get_by_role("gridcell").get_by_role("link", name=child_name, exact=True)
    if not child.is_visible():
        parent_cell.get_by_role("button").click()
    child.wait_for()


def show_columns(page, names: list[str]) -> None:
    """Show ``names`` instead of the Dataset, Source and Models columns, toggling them in the runs table's Columns menu.

    The menu toggles: each experiment's columns are chosen once per browser (the UI keeps the choice).
    """
    page.get_by_role("button", name="Columns", exact=True).click()
    menu = page.get_by_role("dialog")
    for name in ["Dataset", "Source", "Models", *names]:
        menu.get_by_text(name, exact=True).click()
    page.keyboard.press("Escape")
    for name in names:
        page.get_by_role("columnheader", name=name, exact=True).first.wait_for()


def row_cells(page, run_name: str) -> dict[str, str]:
    """The runs table's cells of ``run_name``'s row, by column id (the table splits each row in several parts)."""
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_name, exact=True)).first
    index = row.get_attribute("row-index")
    cells = page.locator(f"[role=row][row-index='{index}'] [role=gridcell][col-id]")
    return {cell.get_attribute("col-id"): cell.inner_text().strip() for cell in cells.all()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_printed_address_opens_the_study_with_its_parent_run(store: Store, ui: Ui, browser, shots) -> None:
    # A browser that has never seen this UI: no saved settings beyond the closed assistant panel.
    fresh = new_page(browser, {key: value for key, value in UI_SETTINGS.items() if "workflowType" not in key})
    try:
        assert ui.printed_address == experiment_address(ui.base, store.study_experiment_id)
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(ui.port) == {"127.0.0.1"}  # this machine only, unless HOST=0.0.0.0
        fresh.goto(ui.printed_address)
        parent = fresh.get_by_role("gridcell").get_by_role("link", name=STUDY, exact=True)
        parent.wait_for()

        assert f"/experiments/{store.study_experiment_id}/runs" in fresh.url
        assert parent.get_attribute("href").endswith(f"/runs/{store.parent_run_id}")
        assert fresh.get_by_role("link", name="trial-0000").count() == 0  # children stay folded under the parent
        shots(fresh, "01-study.png")
    finally:
        fresh.context.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_expanding_the_parent_run_shows_every_trial(store: Store, ui: Ui, page, shots) -> None:
    page.goto(ui.printed_address)
    expand(page, STUDY, "trial-0000")
    show_columns(page, ["best_val_accuracy", *SEARCHED_PARAMS])

    listed = {name for name in page.get_by_role("link", name=re.compile(r"^trial-\d{4}$")).all_inner_texts()}
    assert listed == set(store.trials) == {f"trial-{number:04d}" for number in range(4)}
    for name, run in store.trials.items():
        cells = row_cells(page, name)
        for param in SEARCHED_PARAMS:
            assert cells.get(f"params.`{param}`") == run.data.params[param], (name, param, cells)
        assert float(cells["metrics.`best_val_accuracy`"]) == pytest.approx(
            run.data.metrics["best_val_accuracy"], abs=1e-3
        )
    shots(page, "02-trials.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compare_view_plots_the_searched_params_against_val_accuracy(store: Store, ui: Ui, page, shots) -> None:
    page.goto(ui.printed_address)
    expand(page, STUDY, "trial-0000")
    for name in store.trials:
        page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True)).get_by_role(
            "checkbox"
        ).first.check()
    page.get_by_role("button", name="Compare").click()
    heading = page.get_by_role("heading", name=f"Comparing {len(store.trials)} Runs from 1 Experiment")
    heading.wait_for()

    plot = page.get_by_role("tabpanel", name="Parallel Coordinates Plot")
    plot.get_by_role("button", name="Clear All").click()
    params_box, metrics_box = plot.get_by_role("combobox").all()
    for box, names in ((params_box, SEARCHED_PARAMS), (metrics_box, ["val_accuracy"])):
        for name in names:
            box.click()
            box.fill(name)
            page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    axis_titles = plot.locator("svg text.axis-title")
    axis_titles.filter(has_text=re.compile(r"^val_accuracy$")).wait_for()

    assert sorted(axis_titles.all_text_contents()) == sorted([*SEARCHED_PARAMS, "val_accuracy"])
    extents = plot.locator("svg text.axis-extent-text").all_text_contents()  # each axis's top and bottom value
    final_accuracies = [run.data.metrics["val_accuracy"] for run in store.trials.values()]
    assert f"{max(final_accuracies):.5f}" in extents
    assert f"{min(final_accuracies):.5f}" in extents
    labels = plot.locator("svg text").all_text_contents()
    assert {run.data.params["optimizer"] for run in store.trials.values()} <= set(labels)  # a categorical axis
    # The parameters table: one column per trial, in the order of the Run Name row.
    names = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="Run Name:")).get_by_role("cell")
    columns = names.all_inner_texts()
    assert sorted(columns) == sorted(store.trials)
    for param in SEARCHED_PARAMS:
        row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=param, exact=True))
        assert row.get_by_role("cell").all_inner_texts() == [store.trials[name].data.params[param] for name in columns]
    heading.scroll_into_view_if_needed()
    shots(page, "03-compare.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_trial_charts_val_accuracy_per_epoch(store: Store, ui: Ui, page, shots) -> None:
    best_trial = f"trial-{int(store.client.get_run(store.parent_run_id).data.tags['best_trial_number']):04d}"
    run_id = store.trials[best_trial].info.run_id
    page.goto(f"{ui.base}/#/experiments/{store.study_experiment_id}/runs/{run_id}")
    page.get_by_role("heading", name=best_trial).wait_for()
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_role("searchbox", name="Search metric charts").fill("val_accuracy")
    chart = page.get_by_role("heading", name="val_accuracy", exact=True).locator(
        "xpath=ancestor::*[.//*[local-name()='svg' and contains(@class, 'main-svg')]][1]"
    )
    chart.get_by_text(f"{best_trial} (val_accuracy)").wait_for()

    epochs = store.client.get_metric_history(run_id, "val_accuracy")
    assert len(epochs) == 3  # experiments/smoke.toml trains 3 epochs
    assert chart.locator("g.points path.point").count() == len(epochs)  # one point per epoch
    assert chart.get_by_text("Step", exact=True).count() == 1  # x axis: the step, logged as the epoch
    assert page.get_by_role("heading", name="train_loss", exact=True).count() == 0  # the search filters the charts
    shots(page, "04-trial-val-accuracy.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_parent_run_shows_the_best_model_and_its_test_accuracy(store: Store, ui: Ui, page, shots) -> None:
    parent = store.client.get_run(store.parent_run_id)
    page.goto(f"{ui.base}/#/experiments/{store.study_experiment_id}/runs/{store.parent_run_id}")
    page.get_by_role("heading", name=STUDY, exact=True).wait_for()
    test_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="test_accuracy", exact=True))
    test_row.wait_for()

    assert float(test_row.get_by_role("cell").nth(1).inner_text()) == pytest.approx(
        parent.data.metrics["test_accuracy"]
    )
    model_link = page.get_by_role("link", name="best_model").first
    assert re.search(rf"/experiments/{store.study_experiment_id}/models/m-\w+$", model_link.get_attribute("href"))
    best_trial_tag = page.get_by_text(f"best_trial_number: {parent.data.tags['best_trial_number']}")
    assert best_trial_tag.count() == 1
    shots(page, "05-best-model.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_objective_study_shows_its_front_tags_and_hypervolume(store: Store, ui: Ui, page, shots) -> None:
    page.goto(f"{ui.base}/#/experiments/{store.pareto_experiment_id}/runs/{store.pareto_parent_run_id}")
    page.get_by_role("heading", name=PARETO_STUDY, exact=True).wait_for()
    hypervolume_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="hypervolume", exact=True))
    hypervolume_row.wait_for()
    parent = store.client.get_run(store.pareto_parent_run_id)
    assert float(hypervolume_row.get_by_role("cell").nth(1).inner_text()) == pytest.approx(
        parent.data.metrics["hypervolume"], rel=1e-3
    )
    assert page.get_by_text(f"trainlib.selection_rule: {parent.data.tags['trainlib.selection_rule']}").count() == 1
    shots(page, "07-pareto-parent.png")

    page.goto(experiment_address(ui.base, store.pareto_experiment_id))
    expand(page, PARETO_STUDY, "trial-0000")
    show_columns(page, ["pareto_front", "train_seconds", "best_val_accuracy"])
    for name, run in store.pareto_trials.items():
        cells = row_cells(page, name)
        assert cells["tags.`pareto_front`"] == run.data.tags["pareto_front"], (name, cells)
        assert float(cells["metrics.`train_seconds`"]) == pytest.approx(run.data.metrics["train_seconds"], abs=1e-3)
    assert {run.data.tags["pareto_front"] for run in store.pareto_trials.values()} >= {"true"}
    shots(page, "08-pareto-trials.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_throughput_cases_compare_by_device_and_num_workers(store: Store, ui: Ui, page, shots) -> None:
    page.goto(experiment_address(ui.base, store.throughput_experiment_id))
    expand(page, store.bench_parent_name, next(iter(store.cases)))
    show_columns(page, ["samples_per_second", "device", "num_workers", "loader", "workload"])

    for name, run in store.cases.items():
        cells = row_cells(page, name)
        assert cells.get("params.`device`") == run.data.params["device"], (name, cells)
        assert cells.get("params.`num_workers`") == run.data.params["num_workers"], (name, cells)
        assert float(cells["metrics.`samples_per_second`"]) == pytest.approx(
            run.data.metrics["samples_per_second"], rel=1e-3
        )
    shots(page, "06-throughput.png")
