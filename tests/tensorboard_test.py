"""Slow: serve a finished run with the real `tensorboard` and find the slf/* tags over its HTTP API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from configs import test as test_config
from slf_tf.training import Trainer


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_slf_scalars(tmp_path):
    workdir = str(tmp_path / "run")
    Trainer(test_config.get_config(), workdir).run()
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    proc = subprocess.Popen(
        [exe, "--logdir", os.path.join(workdir, "tensorboard"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        tags, deadline = {}, time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    tags = json.load(r)
                if tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert "slf/selection_probability" in tags.get("candidates/cross_entropy", {}), sorted(tags)
        assert "slf/temperature" in tags["decision"] and "metrics/loss" in tags["train"]
        assert "metrics/accuracy" in tags["validation"] and "metrics/accuracy" in tags["test"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/custom_scalars/layout", timeout=5) as r:
            layout = json.load(r)
        charts = [c["title"] for category in layout["category"] for c in category["chart"]]
        assert "selection probability P(selected)" in charts and any(t.startswith("accuracy: train") for t in charts)
        request = urllib.request.Request(  # HParams finds the run's results (named metrics, not hashes)
            f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups",
            data=json.dumps(
                {
                    "experimentName": "",
                    "startIndex": 0,
                    "sliceSize": 10,
                    "colParams": [],
                    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                }
            ).encode(),  # fmt: skip
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            (group,) = json.load(r)["sessionGroups"]
        assert group["name"] == "run"  # the workdir's name
        found = {m["name"]["tag"] for m in group["metricValues"]}
        assert found == {"hparams/best_validation_accuracy", "hparams/test_accuracy_at_best", "hparams/test_accuracy"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
