"""The deployments the way a team meets them: ``python -m deployments.stack`` starts a real Prefect
server, MLflow server and worker on loopback; runs go through the worker; a data event creates a
retraining run; a cancelled training run loses its child process and its MLflow runs end KILLED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from local_stack import TERMINAL, LocalStack, mlflow_runs

from dpo_core.common.io import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = LocalStack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()
    assert s.stopped_cleanly()


def test_a_deployment_runs_through_the_worker_and_logs_to_the_mlflow_server(stack):
    params = {"data": {"source": str(DATA / "prompts.jsonl"), "eval_source": str(DATA / "eval_prompts.jsonl")}}
    flow_run = stack.run_deployment("build-dataset", "build-dataset", params)
    assert stack.wait(flow_run, TERMINAL, 240) == "COMPLETED"
    parent, children = mlflow_runs(stack, flow_run)
    assert parent.info.status == "FINISHED"
    assert [(c.data.tags["stage"], c.info.status) for c in children] == [("build-dataset", "FINISHED")]
    assert children[0].data.metrics["rows/train"] > 0


def test_bad_parameters_are_refused_before_any_work(stack):
    with pytest.raises(httpx.HTTPStatusError) as refused:
        stack.run_deployment("dpo", "dpo", {"model": "x", "feedback": "y", "dpo": {"beta": -1}})
    assert refused.value.response.status_code == 409 and "beta" in refused.value.response.text


def test_new_data_starts_a_retraining_run(stack, tmp_path):
    landed = write_jsonl(tmp_path / "new-prompts.jsonl", read_jsonl(DATA / "prompts.jsonl"))
    before = {r["id"] for r in stack.runs_of("dpo-lifecycle", "cpu-demo")}
    subprocess.run([sys.executable, "-m", "deployments.data_events", "emit", str(landed)], cwd=ROOT, env=stack.env,
                   check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while not (new := [r for r in stack.runs_of("dpo-lifecycle", "cpu-demo") if r["id"] not in before]):
        assert time.monotonic() < deadline, "no run was triggered by the data event"
        time.sleep(1)
    (run,) = new
    assert run["parameters"]["data"]["source"] == str(landed)
    # a real retraining of SmolLM2 is the demo's job, not this test's: stop it here
    stack.stop_run(run["id"])


def _stage_children(name: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "dpo_core" in cmd and name in cmd:
            found.append(proc)
    return found


def test_cancelling_a_training_run_kills_its_process_group_and_marks_mlflow_killed(stack, tiny_model, tmp_path):
    pairs = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"Say a word about {i}."}],
              "chosen": [{"role": "assistant", "content": f"calm words about {i}"}],
              "rejected": [{"role": "assistant", "content": f"LOUD WORDS {i}"}],
              "score_chosen": 1.0, "score_rejected": 0.0} for i in range(16)]
    feedback = tmp_path / "feedback"
    write_jsonl(feedback / "pairs.jsonl", pairs)
    write_jsonl(feedback / "candidates.jsonl", [])
    params = {"model": tiny_model, "feedback": str(feedback),
              "dpo": {"lora": False, "epochs": 100, "batch_size": 1, "learning_rate": 1e-4}}
    flow_run = stack.run_deployment("dpo", "dpo", params)
    deadline = time.monotonic() + 240
    while not (children := _stage_children("dpo")):
        assert time.monotonic() < deadline and stack.state(flow_run) not in TERMINAL, stack.state(flow_run)
        time.sleep(0.5)
    while not _logged_steps(stack):  # cancel mid-training, once it has taken a step
        assert time.monotonic() < deadline, "training never took a step"
        time.sleep(0.5)
    stack.api("POST", f"/flow_runs/{flow_run}/set_state", json={"state": {"type": "CANCELLING"}})
    assert stack.wait(flow_run, TERMINAL, 120) == "CANCELLED"
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    parent, stages = mlflow_runs(stack, flow_run)
    assert [(c.data.tags["stage"], c.info.status) for c in stages] == [("dpo", "KILLED")]
    assert parent.info.status == "KILLED"
    assert 0 < len(_logged_steps(stack)) < 1600  # it was stopped mid-training


def _logged_steps(stack: LocalStack) -> list[dict]:
    logs = list((Path(stack.env["DPO_HOME"]) / "stages" / "dpo").glob("*/metrics.jsonl"))
    return [json.loads(line) for line in logs[0].read_text().splitlines()] if logs else []


ARTIFACTS = Path(os.environ.get("DPO_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture()
def browser():
    """Debian's headless Chromium through its chromedriver (installed by `make test`; never downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.save_screenshot(str(ARTIFACTS / "last-page.png"))  # where the test ended, passed or not
    driver.quit()


def _field(driver, label: str, tag: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//label[normalize-space(.)='{label}']/following::{tag}[1]")


def _type(element, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value


def test_browser_runs_the_lifecycle_from_the_prefect_form_and_finds_it_in_mlflow(stack, browser, tiny_model):
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By

    deployment = stack.api("GET", "/deployments/name/dpo-lifecycle/cpu-demo")
    browser.get(f"{stack.prefect}/deployments/deployment/{deployment['id']}")
    _wait_for(lambda: "cpu-demo" in browser.page_source, 60, "the deployment page")
    browser.save_screenshot(str(ARTIFACTS / "prefect-deployment.png"))

    browser.get(f"{stack.prefect}/deployments/deployment/{deployment['id']}/run")
    _wait_for(lambda: browser.find_elements(By.XPATH, "//label[normalize-space(.)='Min Score (Optional)']"), 60,
              "the parameter form")
    _type(_field(browser, "model (Optional)", "textarea"), tiny_model)
    _type(_field(browser, "Source (Optional)", "textarea"), str(DATA / "prompts.jsonl"))
    _type(_field(browser, "Min Score (Optional)", "input"), "0")  # a random tiny model rarely follows every instruction
    browser.save_screenshot(str(ARTIFACTS / "prefect-run-form.png"))
    before = {r["id"] for r in stack.runs_of("dpo-lifecycle", "cpu-demo")}
    new_runs = []
    for attempt in range(3):  # under load the UI can show "Something went wrong" on submit; a user clicks again
        submit = browser.find_element(By.XPATH, "//button[@type='submit'][normalize-space(.)='Submit']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
        try:
            submit.click()
        except ElementClickInterceptedException:  # a toast or a closing menu over the button: wait, click again
            time.sleep(2)
            continue
        deadline = time.monotonic() + 30
        while not (new_runs := [r for r in stack.runs_of("dpo-lifecycle", "cpu-demo") if r["id"] not in before]):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        browser.save_screenshot(str(ARTIFACTS / f"prefect-after-submit-{attempt + 1}.png"))
        if new_runs:
            break
    assert len(new_runs) == 1, "the form submitted no flow run in 3 attempts (see prefect-after-submit-*.png)"
    (run,) = new_runs
    flow_run_id = run["id"]
    browser.get(f"{stack.prefect}/runs/flow-run/{flow_run_id}")
    assert run["parameters"]["model"] == tiny_model and run["parameters"]["sft"]["min_score"] == 0
    assert stack.wait(flow_run_id, TERMINAL, 600) == "COMPLETED"
    browser.refresh()
    _wait_for(lambda: "Completed" in browser.page_source, 60, "the run page to show Completed")
    browser.save_screenshot(str(ARTIFACTS / "prefect-flow-run-completed.png"))

    parent, children = mlflow_runs(stack, flow_run_id)
    assert {c.data.tags["stage"] for c in children} >= {"build-dataset", "collect-feedback", "sft", "dpo", "evaluate"}
    browser.get(f"{stack.mlflow}/#/experiments/{parent.info.experiment_id}/runs")
    _wait_for(lambda: parent.info.run_name in browser.page_source, 120, "the lifecycle run in MLflow's run list")
    browser.save_screenshot(str(ARTIFACTS / "mlflow-experiment.png"))
    dpo_run = next(c for c in children if c.data.tags["stage"] == "dpo")
    browser.get(f"{stack.mlflow}/#/experiments/{parent.info.experiment_id}/runs/{dpo_run.info.run_id}/model-metrics")
    _wait_for(lambda: "eval_logps" in browser.page_source and "eval_logits" in browser.page_source, 120,
              "the DPO run's metric charts (TRL's names) in MLflow")
    browser.save_screenshot(str(ARTIFACTS / "mlflow-dpo-metrics.png"))


def test_a_watched_folder_turns_a_new_data_file_into_a_retraining_run(stack, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    watcher = subprocess.Popen([sys.executable, "-m", "deployments.data_events", "watch", str(incoming), "--poll-s", "0.5"],
                               cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert watcher.stdout.readline().startswith("watching")  # it has taken stock of the (empty) folder
        before = {r["id"] for r in stack.runs_of("dpo-lifecycle", "cpu-demo")}
        landed = write_jsonl(incoming / "batch-2.jsonl", read_jsonl(DATA / "prompts.jsonl"))
        deadline = time.monotonic() + 120
        while not (new := [r for r in stack.runs_of("dpo-lifecycle", "cpu-demo") if r["id"] not in before]):
            if time.monotonic() > deadline:
                watcher.terminate()
                pytest.fail(f"the watcher's event started no run; watcher said: {watcher.communicate(timeout=10)[0]}")
            time.sleep(1)
        (run,) = new
        assert run["parameters"]["data"]["source"] == str(landed.resolve())
        stack.stop_run(run["id"])
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
