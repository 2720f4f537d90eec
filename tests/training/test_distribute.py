"""Tests of bnn_keras.training.distribute: strategy choice, roles, LR scaling, and a real two-worker run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.training import distribute
from bnn_keras.errors import BnnError

WORKER_SCRIPT = Path(__file__).with_name("_multiworker_worker.py")
WORKER_TIMEOUT_S = 120


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(BnnError, match="auto, default, mirrored, multi-worker"):
        distribute.make_strategy("horovod")


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(BnnError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi-worker")


def test_auto_without_cluster_or_gpus_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if len(tf.config.list_physical_devices("GPU")) > 1:
        pytest.skip("this machine has several GPUs")
    strategy = distribute.make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert distribute.worker_count(strategy) == 1


def test_output_dir_of_a_single_process_is_the_run_dir(tmp_path):
    strategy = distribute.make_strategy("default")
    assert distribute.output_dir(tmp_path / "run", strategy) == tmp_path / "run"


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_two_workers(tmp_path, optimizer):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ)
        task = {"type": "worker", "index": index}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        env["TF_USE_LEGACY_KERAS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        log = open(tmp_path / f"worker{index}.log", "w")
        processes.append((subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), str(tmp_path / "run"),
             str(tmp_path / f"worker{index}.npz"), optimizer],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        ), log))
    try:
        for process, _ in processes:
            process.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("a worker did not finish in time")
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    for index, (process, _) in enumerate(processes):
        output = (tmp_path / f"worker{index}.log").read_text()[-3000:]
        assert process.returncode == 0, f"worker {index} failed:\n{output}"
    weights = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    infos = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    return weights, infos


@pytest.mark.parametrize("optimizer", ["adam", "bop"])
def test_two_workers_finish_with_identical_weights(tmp_path, optimizer):
    weights, infos = _run_two_workers(tmp_path, optimizer)
    first, second = weights
    trained = sorted(k for k in first.files if k.startswith("w"))
    assert trained and sorted(k for k in second.files if k.startswith("w")) == trained
    for key in trained:
        # Exact equality: all-reduced gradients and identical updates on every worker.
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    changed = [k for k in trained if not np.array_equal(first[k], first["init" + k[1:]])]
    names = infos[0]["names"]
    assert any("bconv/kernel" in names[int(k[1:])] for k in changed)
    assert any("fp_conv/kernel" in names[int(k[1:])] for k in changed)
    assert [info["is_chief"] for info in infos] == [True, False]
    assert [info["workers"] for info in infos] == [2, 2]
    assert [info["replicas"] for info in infos] == [2, 2]
    assert [info["iterations"] for info in infos] == [4, 4]
    # The chief saved into the run folder; the other worker's temporary folder is gone.
    assert (tmp_path / "run" / "model.keras").is_file()
    assert infos[0]["output_dir"] == str(tmp_path / "run")
    assert not Path(infos[1]["output_dir"]).exists()
