"""A run's workdir: its lock, its identity (``config.json``), and files a crash or a rerun cannot corrupt.

* **Lock** (``.lock``, JSON: pid, host, start): one trainer per workdir. A lock
  whose process is gone (same host, dead pid) is stale and taken over.
* **Identity**: a rerun compares its config with the workdir's ``config.json``.
  Fields that only say how long or how verbosely to run (:data:`RESUMABLE`) may
  change and are recorded in ``config_changes.jsonl``; anything else refuses,
  with the differing fields and the two ways out: a new workdir, or
  ``new_run=True`` (``--new_run``), which moves the old run into
  ``previous_runs/<time>/`` and starts over. Nothing is deleted.
* **Files**: ``metrics.jsonl`` is cut back to whole lines at the resumed step (a
  crash mid-write, or lines logged after the last checkpoint); ``config.json``
  and ``results.json`` are replaced atomically; exports never follow a link out
  of the workdir; paths that must be files or folders are checked up front.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from typing import Any

from absl import logging

from slf_tf.training.checkpointing import read_json_object, write_json

__all__ = ["RESUMABLE", "Workdir", "flatten"]

#: Config fields a resumed run may change (recorded); any other change refuses.
RESUMABLE = frozenset(
    {
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "max_checkpoints",
        "early_stopping_patience",
        "export",
        "distribution",
        "deterministic",
        "jit_compile",
        "data.data_dir",
    }
)
RUN_FILES = (
    "config.json",
    "config_changes.jsonl",
    "metrics.jsonl",
    "results.json",
    "checkpoints",
    "tensorboard",
    "export",
)
_FILES = ("config.json", "metrics.jsonl", "results.json", "config_changes.jsonl")
_FOLDERS = ("checkpoints", "tensorboard", "export")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for a nested config or dict (lists become tuples, for comparison)."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workdir:
    """The files of one run under ``path`` (the chief's; other workers only lock their scratch folder)."""

    def __init__(self, path: str):
        self.path = path
        self._locked = False

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    # ----------------------------------------------------------------- checks --

    def prepare(self) -> None:
        """Creates the workdir and checks it is writable and that its run files are what they should be."""
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = self.join(f".write_test_{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise ValueError(f"Cannot write to workdir {self.path!r}: {e.strerror or e}.") from None
        for name in _FILES:
            if os.path.isdir(self.join(name)):
                raise ValueError(f"{self.join(name)} is a folder; it must be a file (move the folder aside).")
        for name in _FOLDERS:
            path = self.join(name)
            if os.path.lexists(path) and not os.path.isdir(path):
                raise ValueError(f"{path} is a file; it must be a folder (move the file aside).")
        checkpoints = self.join("checkpoints")
        if os.path.isdir(checkpoints):  # a real write: os.access says yes to root even on read-only mounts
            try:
                probe = os.path.join(checkpoints, f".write_test_{os.getpid()}")
                with open(probe, "w") as f:
                    f.write("ok")
                os.remove(probe)
            except OSError as e:
                raise ValueError(
                    f"{checkpoints} is not writable ({e.strerror or e}); no checkpoint could be saved. "
                    "Fix its permissions or use another workdir."
                ) from None
        self.check_links("export")

    def check_links(self, folder: str) -> None:
        """Refuses links under ``folder`` that lead out of the workdir (an export would write through them)."""
        root = os.path.realpath(self.path)
        top = self.join(folder)
        paths = [top] + [os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files]
        for path in paths:
            if os.path.islink(path) and not os.path.realpath(path).startswith(root + os.sep):
                raise ValueError(
                    f"{path} is a link to {os.path.realpath(path)}, outside the workdir; an export would overwrite "
                    "what it points to. Remove the link."
                )

    # ------------------------------------------------------------------- lock --

    def lock(self) -> None:
        """Takes ``.lock`` (re-entrant within one process); a lock held by a live process refuses, naming it."""
        path = self.join(".lock")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder(path)
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    self._locked = True
                    return
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    logging.warning("Taking over the stale lock of pid %s in %s.", holder.get("pid"), self.path)
                    os.remove(path)
                    continue
                raise ValueError(
                    f"Workdir {self.path!r} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
                    f"(since {holder.get('started')}). Wait for it to finish, use another workdir, or, if that "
                    f"process is gone, delete {path}."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return

    @staticmethod
    def _holder(path: str) -> dict[str, Any]:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def unlock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                os.remove(self.join(".lock"))
            except FileNotFoundError:
                pass

    # --------------------------------------------------------------- identity --

    def check_identity(self, config: Any, has_checkpoints: bool, new_run: bool = False) -> None:
        """Compares ``config`` with the run already in the workdir (see the module docstring).

        Accepted changes are kept in :attr:`pending_changes` and recorded by :meth:`write_config`, once
        every other check has passed (a refused rerun leaves ``config_changes.jsonl`` as it was).
        """
        self.pending_changes: list[tuple[str, Any, Any]] = []
        path = self.join("config.json")
        if new_run:
            if any(os.path.lexists(self.join(name)) for name in RUN_FILES):
                self._move_run_aside()
            return
        if not os.path.exists(path):
            if has_checkpoints:
                raise ValueError(
                    f"Workdir {self.path!r} holds checkpoints but no config.json, so this config cannot be checked "
                    "against the run they belong to. Put config.json back, use a new workdir, or pass "
                    "new_run=True (--new_run) to move the old run into previous_runs/ and start afresh."
                )
            return
        if not has_checkpoints:
            return  # nothing trained to mix with: this run starts over and rewrites config.json
        saved = flatten(read_json_object(path, "put the run's config.json back, or pass --new_run"))
        current = flatten(json.loads(config.to_json_best_effort()))
        changed = sorted(
            k for k in saved.keys() | current.keys() if saved.get(k, "<absent>") != current.get(k, "<absent>")
        )
        refused = [k for k in changed if k not in RESUMABLE]
        if refused:
            diff = "\n".join(
                f"  {k}: {saved.get(k, '<absent>')!r} in the workdir, {current.get(k, '<absent>')!r} now"
                for k in refused
            )
            raise ValueError(
                f"Workdir {self.path!r} holds a run with a different config:\n{diff}\n"
                "Resuming would mix two settings in one run. Use a new workdir, or pass new_run=True "
                "(--new_run) to move the old run into previous_runs/ and start this one afresh."
            )
        self.pending_changes = [(key, saved.get(key), current.get(key)) for key in changed]

    def _record_change(self, key: str, old: Any, new: Any) -> None:
        logging.warning("Resuming with config.%s changed from %r to %r (recorded).", key, old, new)
        with open(self.join("config_changes.jsonl"), "a") as f:
            f.write(json.dumps({"time": _now(), "field": key, "old": old, "new": new}, default=str) + "\n")

    def _move_run_aside(self) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        target, n = self.join("previous_runs", stamp), 1
        while os.path.lexists(target):  # two moves within one second: never into the first one's folder
            n += 1
            target = self.join("previous_runs", f"{stamp}-{n}")
        os.makedirs(target)
        for name in RUN_FILES:
            if os.path.lexists(self.join(name)):
                shutil.move(self.join(name), os.path.join(target, name))
        logging.warning("Started a new run: moved the previous one into %s.", target)

    def check_steps(self, restored_step: int, num_train_steps: int) -> None:
        """Refuses ``num_train_steps`` below the step the workdir's run has reached."""
        if num_train_steps < restored_step:
            raise ValueError(
                f"Workdir {self.path!r} holds a run at step {restored_step}; num_train_steps={num_train_steps} would "
                f"report that run under a shorter budget. Use num_train_steps >= {restored_step}, or a new workdir."
            )

    # ------------------------------------------------------------------ files --

    def write_config(self, config: Any) -> None:
        """Records the accepted config changes (see :meth:`check_identity`), then replaces ``config.json``."""
        for key, old, new in getattr(self, "pending_changes", []):
            self._record_change(key, old, new)
        self.pending_changes = []
        path = self.join("config.json")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(tmp, path)

    def trim_metrics(self, step: int) -> None:
        """Keeps the whole lines of ``metrics.jsonl`` up to ``step`` (drops a torn last line and later steps)."""
        path = self.join("metrics.jsonl")
        if not os.path.exists(path):
            return
        kept, dropped = [], 0
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    complete = line.endswith("\n")
                except ValueError:
                    row, complete = None, False
                if isinstance(row, dict) and complete and row.get("step", 0) <= step:
                    kept.append(line)
                else:
                    dropped += 1
        if dropped:
            logging.warning(
                "metrics.jsonl: dropped %d line(s) after step %d, cut short by a crash or not a JSON object.",
                dropped,
                step,
            )
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)

    def drop_final_evaluation(self, step: int) -> None:
        """Drops the final evaluation's row at ``step`` (``eval/test_*``): a re-evaluation writes it again."""
        path = self.join("metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = f.readlines()
        kept = [line for line in lines if not _is_final_row(line, step)]
        if len(kept) != len(lines):
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.join("results.json"), results)


def _is_final_row(line: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and row.get("step") == step and any(k.startswith("eval/test_") for k in row)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
