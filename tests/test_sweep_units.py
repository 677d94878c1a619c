"""The sweep's planning and refusals, without training: devices per worker, initial trials, bad input."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import write_space

from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.sweep import devices
from lit_tuning.sweep.cli import main
from lit_tuning.sweep.devices import DeviceError, plan_workers
from lit_tuning.sweep.study import initial_trials


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["0", "1", "2", "3"])


def test_one_worker_per_gpu_each_seeing_only_its_own(four_gpus):
    plans = plan_workers(None, "auto")
    assert [plan.env["CUDA_VISIBLE_DEVICES"] for plan in plans] == ["0", "1", "2", "3"]
    assert all("--trainer.accelerator=gpu" in plan.fit_args for plan in plans)
    assert [plan.device for plan in plans] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_k_workers_share_a_gpu_and_devices_can_be_chosen(four_gpus):
    plans = plan_workers(None, "1,3", workers_per_gpu=2)
    assert [plan.env["CUDA_VISIBLE_DEVICES"] for plan in plans] == ["1", "1", "3", "3"]
    assert [plan.name for plan in plans] == ["worker-0", "worker-1", "worker-2", "worker-3"]


def test_unknown_gpu_is_refused_with_the_allowed_values(four_gpus):
    with pytest.raises(DeviceError, match=r"GPU 7 not visible; allowed: auto, cpu, or a comma list of \['0', '1'"):
        plan_workers(None, "0,7")


def test_cpu_workers_split_the_cores(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(8)))
    plans = plan_workers(4, "auto")
    assert [plan.threads for plan in plans] == [2, 2, 2, 2]
    assert all(plan.env["OMP_NUM_THREADS"] == "2" and plan.env["CUDA_VISIBLE_DEVICES"] == "" for plan in plans)
    monkeypatch.setattr(devices, "available_memory", lambda: 64 << 30)
    default = plan_workers(None, "cpu")  # one single-thread worker per core when memory allows
    assert len(default) == 8 and {plan.threads for plan in default} == {1}


def test_memory_bounds_the_default_cpu_workers():
    gib = 1 << 30
    assert devices.cpu_worker_count(16, 2 * gib, 64 * gib) == 5  # 0.8 * 64 GiB / (1 + 4 x 2) GiB
    assert devices.cpu_worker_count(16, 2 * gib, 4 * gib) == 1
    assert devices.cpu_worker_count(2, 3 << 20, 64 * gib) == 2  # the tiny model: the cores bound it
    assert devices.cpu_worker_count(4, None, None) == 4


def test_ddp_trials_get_k_devices_each(four_gpus, monkeypatch):
    plans = plan_workers(None, "auto", devices_per_trial=2)
    assert [plan.env["CUDA_VISIBLE_DEVICES"] for plan in plans] == ["0,1", "2,3"]
    assert all({"--trainer.devices=2", "--trainer.strategy=ddp"} <= set(plan.fit_args) for plan in plans)
    with pytest.raises(DeviceError, match="--devices-per-trial 3; allowed: 1 to 2"):
        plan_workers(None, "0,1", devices_per_trial=3)
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(4)))
    cpu = plan_workers(None, "cpu", devices_per_trial=2, model_bytes=1 << 20)
    assert len(cpu) == 2 and all(plan.devices_per_trial == 2 and plan.threads == 1 for plan in cpu)
    assert all("--trainer.accelerator=cpu" in plan.fit_args and "--trainer.devices=2" in plan.fit_args for plan in cpu)


def test_base_config_runs_first_when_it_lies_in_the_space(tmp_path):
    inside = load_search_space(write_space(tmp_path, "inside"))
    assert initial_trials(inside) == [({"model.learning_rate": 2e-3}, {"is_base_config": True})]
    outside = load_search_space(
        write_space(tmp_path, "outside", parameters={"model.learning_rate": {"low": 1e-2, "high": 3e-2}})
    )
    assert initial_trials(outside) == []


def run_main(*args: str) -> int:
    return main([*args])


def test_bad_storage_is_refused_before_anything_runs(tmp_path, capsys):
    space = write_space(tmp_path, "s")
    assert run_main(f"--search-space={space}", "--storage=redis://127.0.0.1/0", f"--results-root={tmp_path}") == 2
    message = capsys.readouterr().err
    assert "--storage 'redis://127.0.0.1/0' uses 'redis'; allowed: sqlite:///" in message
    assert not (tmp_path / "runs").exists()


def test_unsafe_study_name_is_refused(tmp_path, capsys):
    space = write_space(tmp_path, "s")
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert run_main(f"--search-space={space}", "--study=../x", f"--storage={storage}") == 2
    assert "--study '../x' is not a safe name" in capsys.readouterr().err
    assert optuna.get_all_study_summaries(storage) == []


def test_resuming_a_study_with_another_space_is_refused(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="s", storage=storage).set_user_attr("search_space_name", "other")
    space = write_space(tmp_path, "s")
    assert run_main(f"--search-space={space}", f"--storage={storage}", f"--results-root={tmp_path}") == 2
    assert "study 's' already exists with another definition (search_space_name: stored 'other'" in (
        capsys.readouterr().err
    )
    assert optuna.load_study(study_name="s", storage=storage).trials == []


def test_bad_search_space_names_the_file_and_key(tmp_path, capsys):
    space = write_space(tmp_path, "s")
    document = yaml.safe_load(space.read_text())
    document["pruner"] = "sometimes"
    space.write_text(yaml.safe_dump(document))
    assert run_main(f"--search-space={space}", f"--storage=sqlite:///{tmp_path / 'o.db'}") == 2
    message = capsys.readouterr().err
    assert str(space) in message and "pruner" in message and "hyperband" in message
    assert not Path(tmp_path / "o.db").exists()
