"""Checkpoints of a run folder: each model's top model (written by the server) and bottom
models (written by each party), completed by a marker file; reading them back, and telling
what is missing or unreadable in a finished run."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from vfl_sim.errors import RunFolderError
from vfl_sim.protocol import CoreStep, LocalOp
from vfl_sim.server.server import Server

log = logging.getLogger("vfl_sim")

CHECKPOINTS = "checkpoints"
DONE_MARK = "run.json"  # written last in a model's checkpoint folder: the checkpoint is complete


class CheckpointError(RunFolderError):
    """A checkpoint file of a run folder is gone, cannot be read, or holds another model."""

    def __init__(self, model: str, path: Path, reason: str) -> None:
        super().__init__(f"the checkpoint of '{model}' is unreadable: {path}: {reason}")
        self.model, self.path, self.reason = model, path, reason


def error_reason(exc: BaseException) -> str:
    """An exception in one short line (its type and the first line of its message)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0].split(". ")[0] if lines else ""  # torch's messages run on with advice
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_tensors(path: Path, model: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``; a :class:`CheckpointError` when it cannot be."""
    try:
        state = torch.load(path, weights_only=True, **kwargs)
    except Exception as exc:  # truncated, not a torch file, gone: torch raises many kinds
        raise CheckpointError(model, path, error_reason(exc)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(model, path, "not a state dict of tensors")
    return state


def read_report(folder: Path) -> dict[str, Any]:
    """The ``report.json`` of a finished run, checked for what a re-audit and a resume read;
    a :class:`RunFolderError` names the file when it is unreadable."""
    path = folder / "report.json"
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is unreadable ({error_reason(exc)})") from None
    models = report.get("models") if isinstance(report, dict) else None
    if not isinstance(models, dict) or not all(
        isinstance(m, dict) and "runtime_s" in m and "communication" in m for m in models.values()
    ):
        raise RunFolderError(f"{path} is damaged (no 'models' with each model's runtime_s and communication)")
    return report


def save_checkpoint(server: Server, name: str, folder: Path, run: dict[str, Any]) -> None:
    """Write snapshot ``name``: the server its top model, each party its own bottom (parties'
    files never travel through the server); then the marker that makes it complete."""
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / DONE_MARK).unlink(missing_ok=True)
    torch.save(server.states[name], target / "top.pt")
    server.transport.exchange(
        {
            pid: LocalOp(CoreStep.CHECKPOINT, {"path": str(target / f"{pid}.pt"), "name": name})
            for pid in server.party_ids
        }
    )
    tmp = target / (DONE_MARK + ".tmp")
    tmp.write_text(json.dumps(run))
    os.replace(tmp, target / DONE_MARK)


def restore_checkpoint(server: Server, name: str, folder: Path) -> bool:
    """Load snapshot ``name`` from a complete checkpoint (server and parties); False if none.

    Raises
    ------
    CheckpointError
        A file of the checkpoint is gone or cannot be read (truncated, overwritten), or
        holds another model; nothing is loaded then.
    """
    target = folder / name
    if checkpoint_record(target, name, server.party_ids) is None:
        return False
    top = load_tensors(target / "top.pt", name, map_location=server.device)
    want = {k: tuple(v.shape) for k, v in server.top.state_dict().items()}
    if {k: tuple(v.shape) for k, v in top.items()} != want:
        raise CheckpointError(name, target / "top.pt", "its tensors do not fit this config's top model")
    try:
        server.transport.exchange(
            {
                pid: LocalOp(CoreStep.LOAD_CHECKPOINT, {"path": str(target / f"{pid}.pt"), "name": name})
                for pid in server.party_ids
            }
        )
    except Exception as exc:  # a party could not read what this process could
        raise CheckpointError(name, target, error_reason(exc)) from None
    server.states[name] = top
    return True


def restored(server: Server, name: str, folder: Path) -> bool:
    """:func:`restore_checkpoint`, with an unreadable checkpoint taken as absent (logged),
    so that ``resume`` runs that model again."""
    try:
        return restore_checkpoint(server, name, folder)
    except CheckpointError as exc:
        log.warning("%s; running '%s' again", exc, name)
        return False


def run_folder_damage(out: Path, models: list[str], party_ids: list[str]) -> str | None:
    """What is missing or unreadable in the completed run folder ``out`` (its report, or the
    checkpoint of one of ``models``), or None when it is intact. Reads the files
    (without building any party), so it holds where the parties wrote them here."""
    try:
        read_report(out)
        for name in models:
            if not checkpoint_record(out / CHECKPOINTS / name, name, party_ids):
                return f"no complete checkpoint of '{name}' under {CHECKPOINTS}/"
    except RunFolderError as exc:
        return str(exc)
    return None


def checkpoint_record(target: Path, name: str, party_ids: list[str]) -> dict[str, Any] | None:
    """The record (``run.json``) of the complete checkpoint of ``name`` in ``target`` once
    every file of it reads, None if it is not complete; a :class:`CheckpointError` names a
    file that is gone or unreadable."""
    mark = target / DONE_MARK
    if not mark.is_file():
        return None
    try:
        record = json.loads(mark.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(name, mark, error_reason(exc)) from None
    if not isinstance(record, dict):
        raise CheckpointError(name, mark, "not a JSON object")
    for file in ["top", *party_ids]:  # each party reads its own; here only whether it can
        load_tensors(target / f"{file}.pt", name, map_location="cpu")
    return record
