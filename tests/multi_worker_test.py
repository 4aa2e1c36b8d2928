"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 agree with each other and with one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _command(workdir, *overrides):
    cmd = [sys.executable, "-m", "trainers.classify", "--config=configs/test.py", f"--workdir={workdir}"]
    return cmd + [f"--config.{o}" for o in overrides]


def _weights(checkpoint_prefix):
    reader = tf.train.load_checkpoint(checkpoint_prefix)
    # The main network's weights (saved under the optimizer that tracks them) and the decision network's.
    names = sorted(
        k for k in reader.get_variable_to_shape_map() if "_trainable_variables/" in k or k.startswith("decision/")
    )
    return {k: reader.get_tensor(k) for k in names}


def _start_workers(command, count=2, cluster_size=2):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(cluster_size)]}
    procs = []
    for index in range(count):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": REPO,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        procs.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return procs, outputs


def test_two_workers_match_each_other_and_a_single_process(tmp_path):
    workdir, single = str(tmp_path / "mw"), str(tmp_path / "single")
    procs, outputs = _start_workers(_command(workdir, "distribution=multi_worker"))
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "test accuracy" in outputs[0][0] and "test accuracy" not in outputs[1][0]  # only the chief reports
    # Only the chief writes summaries, metrics, results and exports.
    assert os.path.exists(os.path.join(workdir, "export", "model.keras"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 10, 15, 20]
    chief = _weights(os.path.join(workdir, "checkpoints", "ckpt-20"))
    other = _weights(os.path.join(workdir, ".worker_1", "checkpoints", "ckpt-20"))
    assert chief and chief.keys() == other.keys()
    for k in chief:
        np.testing.assert_array_equal(chief[k], other[k], err_msg=k)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(_command(single), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = _weights(os.path.join(single, "checkpoints", "ckpt-20"))
    for k in chief:
        np.testing.assert_allclose(chief[k], alone[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_keras_fit_with_slf_model_on_two_workers_agrees():
    procs, outputs = _start_workers([sys.executable, os.path.join(REPO, "tests", "keras_multi_worker.py")])
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]  # the same losses and decision on both workers
    assert results[0]["loss"][-1] < results[0]["loss"][0]
    assert any(abs(v) > 1e-4 for row in results[0]["decision"] for v in row)  # the decision network learned


def test_a_missing_peer_is_reported_and_times_out(tmp_path):
    procs, outputs = _start_workers(
        _command(str(tmp_path / "w"), "distribution=multi_worker", "multi_worker_timeout_s=5"), count=1
    )
    (proc,), ((_, err),) = procs, outputs
    assert proc.returncode == 1, err[-2000:]
    assert "Waiting for the multi-worker cluster" in err and "multi_worker_timeout_s=5 s" in err
    assert "Timeout (0:00:05)!" in err  # faulthandler's deadline, with the stack it waited in
