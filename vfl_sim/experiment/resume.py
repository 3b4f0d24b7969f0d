"""What must hold before a run folder is resumed or re-audited: the same config (as settings),
the same models, and for a completed run the same forget request and methods."""

from __future__ import annotations

from pathlib import Path

from vfl_sim.config import ExperimentConfig, dump_config, load_config
from vfl_sim.errors import ConfigError, VflSimError
from vfl_sim.server.ledger import COMPLETED, LEDGER_FILE, RequestLedger
from vfl_sim.server.unlearning import ForgetSet, UnlearningMethod


def check_same_config(cfg: ExperimentConfig, folder: Path) -> None:
    """Refuse to resume a run made with another config. The saved config is compared as
    settings, not as text: one written before a version added a setting loads with that
    setting's default."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    try:
        same = saved.read_text(errors="replace") == dump_config(cfg) or (
            load_config(saved).model_dump() == cfg.model_dump()
        )
    except VflSimError:
        same = False
    if not same:
        raise ConfigError(
            f"{folder} was made with another config than this one; resume it with the config in "
            f"{saved}, or pass --overwrite to start again"
        )


def check_same_models(cfg: ExperimentConfig, folder: Path) -> None:
    """A re-audit needs the config that made the run's models; the ``audit`` section, where
    and how the parties ran (they give the same models), and settings that newer versions
    added (which load with their defaults) may differ."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    free = {"audit", "name", "runtime", "device", "threads", "flower", "ray"}
    theirs = load_config(saved).model_dump(exclude=free)
    mine = cfg.model_dump(exclude=free)
    changed = sorted(k for k in mine if mine[k] != theirs.get(k))
    if changed:
        raise ConfigError(
            f"{folder} was made with another config ({', '.join(changed)} differ); audit it with the config in {saved}"
        )


def check_replay(cfg: ExperimentConfig, forget: ForgetSet, methods: list[UnlearningMethod], out: Path) -> None:
    """``resume`` on a completed run is a no-op only if its ledger has this request and methods."""
    check_same_config(cfg, out)
    entry = RequestLedger(out / LEDGER_FILE).get(forget.request_id)
    names = [m.label for m in methods]
    if entry is None or entry.status != COMPLETED or any(n not in entry.done for n in names):
        raise ConfigError(
            f"{out} is a completed run without forget request '{forget.request_id}' and methods "
            f"{names}; write to another --out, or pass --overwrite to run again"
        )
