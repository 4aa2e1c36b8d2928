"""A Python toolchain whose interpreter is $PYTHON_BIN_PATH (default: python3 on PATH)."""

def _local_python_impl(rctx):
    python = rctx.os.environ.get("PYTHON_BIN_PATH", "")
    if not python:
        found = rctx.which("python3")
        if not found:
            fail("No Python interpreter: set PYTHON_BIN_PATH (make bazel-test sets it to .venv/bin/python).")
        python = str(found)
    rctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "py_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

local_python = repository_rule(
    implementation = _local_python_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
