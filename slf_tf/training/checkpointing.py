"""Checkpoints of a run: rolling ones to resume from, and the best-validation one kept apart.

Layout under ``<workdir>/checkpoints``: ``ckpt-<step>.*`` (the newest
``max_to_keep``), and ``best/ckpt-<step>.*`` with ``best/best.json`` (the step,
its validation and test metrics). Checkpoints are found from their files, not
from TensorFlow's ``checkpoint`` state file alone, so a lost or garbled state
file neither restarts a run nor lets it overwrite what is there.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import tensorflow as tf
from absl import logging

__all__ = ["Checkpointer", "list_checkpoints", "read_json_object", "write_json"]

_READ_ERRORS = (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError)


def list_checkpoints(directory: str) -> list[str]:
    """The checkpoint prefixes in ``directory`` (``.../ckpt-<step>``), oldest first, from their index files."""
    found = []
    for index in glob.glob(os.path.join(directory, "ckpt-*.index")):
        match = re.fullmatch(r"ckpt-(\d+)\.index", os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[: -len(".index")]))
    return [prefix for _, prefix in sorted(found)]


def read_json_object(path: str, fix: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; a truncated, garbled or non-object file raises ``ValueError`` naming it
    (and ``fix``, what to do)."""
    todo = f": {fix}." if fix else "."
    try:
        with open(path) as f:
            payload = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}){todo}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a JSON object{todo}")
    return payload


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


class Checkpointer:
    """Saves and restores ``objects`` (a ``tf.train.Checkpoint``'s keyword arguments).

    Args:
      objects: what a checkpoint holds (step, both networks, both optimizers, state).
      directory: where the rolling checkpoints go (``best/`` inside it).
      max_to_keep: rolling checkpoints kept.
      optional: keys of ``objects`` that checkpoints written before they existed lack; such a
        checkpoint still restores, and those objects keep their initial values.
    """

    def __init__(self, objects: dict[str, Any], directory: str, max_to_keep: int = 3, optional: tuple = ()):
        self.objects, self.optional = dict(objects), tuple(optional)
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.directory, self.max_to_keep = directory, max_to_keep
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        self.best_directory = os.path.join(directory, "best")
        self._best_manager = tf.train.CheckpointManager(self.checkpoint, self.best_directory, max_to_keep=1)
        self._warned: set[str] = set()

    def _restore_newest(self, prefixes: list[str]) -> str | None:
        for path in reversed(prefixes):  # newest first; an unreadable one falls back to the previous
            try:
                self._for(path).restore(path).assert_existing_objects_matched()
            except _READ_ERRORS as e:
                logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, type(e).__name__)
                continue
            return path
        return None

    def _for(self, path: str) -> tf.train.Checkpoint:
        """The checkpoint object that reads ``path``: without the optional objects it lacks."""
        if not self.optional:
            return self.checkpoint
        present = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        missing = [key for key in self.optional if key not in present]
        if not missing:
            return self.checkpoint
        logging.info("Checkpoint %s predates %s; they keep their initial values.", path, missing)
        return tf.train.Checkpoint(**{k: v for k, v in self.objects.items() if k not in missing})

    def restore(self) -> str | None:
        """Restores the newest readable rolling checkpoint; returns its path (None: nothing to resume).

        Raises ``ValueError`` if checkpoints exist but none is readable (nothing is overwritten).
        """
        prefixes = list_checkpoints(self.directory)
        if not prefixes:
            return None
        path = self._restore_newest(prefixes)
        if path is None:
            raise ValueError(
                f"No readable checkpoint among {len(prefixes)} in {self.directory}; "
                "move the folder aside to start over, or use a new workdir."
            )
        if self.manager.latest_checkpoint != prefixes[-1]:  # a lost or stale state file: rebuild it
            logging.warning("Checkpoint state file missing or stale in %s; found %s.", self.directory, prefixes[-1])
            tf.compat.v1.train.update_checkpoint_state(
                self.directory, prefixes[-1], all_model_checkpoint_paths=prefixes
            )
            self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep)
        logging.info("Resumed from %s.", path)
        return path

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)

    # ---------------------------------------------------------------- the best --

    def best(self) -> dict[str, Any] | None:
        """The best checkpoint's record ``{"step", "val", "test"}`` (None if there is none yet).

        A record without its checkpoint, a checkpoint without its record (deleted, or a crash between
        the two writes) or an unreadable record counts as no best, with a warning naming the file
        (once): the run goes on and its next improvement saves a new best.
        """
        path = os.path.join(self.best_directory, "best.json")
        prefixes = list_checkpoints(self.best_directory)
        if not os.path.exists(path) and not prefixes:
            return None
        problem = None
        if not os.path.exists(path):
            problem = f"{path} is missing beside {prefixes[-1]}"
        else:
            try:
                record = read_json_object(path)
            except ValueError as e:
                problem = str(e).rstrip(".")
            else:
                if not prefixes:
                    problem = f"{path} names step {record.get('step')} but {self.best_directory} holds no checkpoint"
                else:
                    return record
        if problem not in self._warned:
            self._warned.add(problem)
            logging.warning("%s: no best checkpoint is reported or exported until the next improvement.", problem)
        return None

    def save_best(self, step: int, record: dict[str, Any]) -> None:
        """Saves the current state as the best checkpoint (replacing the previous best)."""
        self._best_manager.save(checkpoint_number=step)
        write_json(os.path.join(self.best_directory, "best.json"), {"step": step, **record})

    def best_prefix(self) -> str | None:
        """The best checkpoint's prefix (None if there is none)."""
        prefixes = list_checkpoints(self.best_directory)
        return prefixes[-1] if prefixes else None

    def restore_best(self) -> bool:
        """Loads the best checkpoint's state (e.g. to export it); False if there is none."""
        prefixes = list_checkpoints(self.best_directory)
        return bool(prefixes) and self._restore_newest(prefixes) is not None
