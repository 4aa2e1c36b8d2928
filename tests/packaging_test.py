"""Packaging: requirements.txt agrees with pyproject.toml; the wheel carries the package and entry points."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _names(specs):
    return {re.split(r"[<>=\[;! ]", s.strip(), maxsplit=1)[0].lower(): s.strip().replace(" ", "") for s in specs}


def test_requirements_match_pyproject():
    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
    lines = [
        line.split("#")[0].strip()
        for line in open(os.path.join(REPO, "requirements.txt"))
        if line.split("#")[0].strip()
    ]
    declared = _names(project["dependencies"] + project["optional-dependencies"]["test"])
    assert _names(lines) == declared


def test_wheel_has_package_configs_and_console_scripts(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for module in ("slf_tf/__init__.py", "slf_tf/training/trainer.py", "trainers/classify.py", "configs/digits.py"):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    for script in ("slf-classify = trainers.classify:run", "slf-regress = trainers.regress:run"):
        assert script in entry_points


def test_build_file_covers_every_module_test_and_trainer():
    build = open(os.path.join(REPO, "BUILD")).read()
    for root in ("slf_tf", os.path.join("slf_tf", "training")):  # experiments/ is one glob library
        for f in os.listdir(os.path.join(REPO, root)):
            if f.endswith(".py"):
                assert f'"{root}/{f}"' in build, f"{root}/{f} is in no Bazel target"
    for f in os.listdir(os.path.join(REPO, "tests")):
        if f.endswith("_test.py"):
            assert re.search(
                rf'py_test\(\n    name = "{f[:-3]}",\n    size = "(small|medium|large|enormous)"', build
            ), f
    assert 'glob(["slf_tf/experiments/*.py"])' in build
    names = re.findall(r'^    name = "([^"]+)"', build, flags=re.M)
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})  # Bazel refuses duplicates
    for trainer in ("classify", "regress", "gumbel_demo", "ils_toy", "gumbel_gan", "k_sweep", "categorical_vae"):
        assert f'py_binary(\n    name = "{trainer}"' in build
