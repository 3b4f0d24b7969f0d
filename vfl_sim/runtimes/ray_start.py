"""Starting or joining Ray: the one place that calls ``ray.init``.

``runtime: ray`` (:mod:`vfl_sim.runtimes.ray_runtime`) and sweeps (:mod:`vfl_sim.sweep`) both
connect through :func:`connect_ray` (or the :func:`ray_session` context around it), so a local
Ray of vfl-sim's always starts the same way: a new Ray of its own (``address="local"``, never a
cluster that ``ray start`` left behind), with a given number of logical CPUs, no dashboard, and
its host (were one started) on loopback only (:data:`LOCAL_RAY`). A cluster address
(``host:port``, ``ray://host:port``, ``auto``) is joined as it is; ``None`` or ``local`` means a
local Ray. A process that is connected already is left as it is.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from vfl_sim.errors import ConfigError, error_line

__all__ = ["LOCAL_RAY", "connect_ray", "ray_address", "ray_session"]

LOCAL_RAY: dict[str, Any] = {"include_dashboard": False, "dashboard_host": "127.0.0.1"}
"""What a local Ray of ours listens with: no dashboard, and its host (were one started)
loopback only. Ray 2.55 itself has no setting for the rest: its gRPC servers (GCS, raylet,
workers) listen on every interface, and ``ray.init`` turns a node address of 127.0.0.1 into
the machine's routable one (``services.resolve_ip_for_localhost``)."""


def ray_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``; None (a local Ray) when neither
    is set or either says ``local``."""
    chosen = address if address is not None else os.environ.get("RAY_ADDRESS") or None
    return None if chosen == "local" else chosen


def connect_ray(
    address: str | None,
    *,
    num_cpus: int,
    local_options: dict[str, Any] | None = None,
    **options: Any,
) -> bool:
    """Connect this process to Ray, unless it is connected already.

    Parameters
    ----------
    address
        The cluster to join (already resolved, see :func:`ray_address`); None or ``local``
        starts a new local Ray.
    num_cpus
        Logical CPUs of a local Ray (a cluster has its own).
    local_options
        Further ``ray.init`` arguments for a local Ray only (e.g. ``object_store_memory``).
    options
        Further ``ray.init`` arguments either way (``log_to_driver``, ``runtime_env``, ...).

    Returns
    -------
    bool
        Whether this call started or joined Ray (False: the process was connected already, and
        the caller must not shut that Ray down).

    Raises
    ------
    ConfigError
        One line naming the local Ray or the cluster when Ray cannot start or be reached.
    """
    if ray.is_initialized():
        return False
    # No usage report from machines that may have no network.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(options)
    if address is None or address == "local":
        # "local": a new Ray of our own, even where `ray start` left a cluster that a bare
        # ray.init() would join (it reads /tmp/ray/ray_current_cluster).
        kwargs.update(address="local", num_cpus=num_cpus, **LOCAL_RAY, **(local_options or {}))
    else:
        kwargs.update(address=address)
    try:
        with warnings.catch_warnings():
            # Ray 2.55 announces a future change of CUDA_VISIBLE_DEVICES for actors without GPUs
            # on every init ("Tip: In future versions of Ray ..."); ray.party_gpus and
            # sweep.gpus_per_cell already decide who gets a GPU.
            warnings.simplefilter("ignore", FutureWarning)
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        ray.shutdown()
        where = f"the Ray cluster at {address}" if kwargs["address"] != "local" else "a local Ray"
        raise ConfigError(f"cannot start {where}: {error_line(exc)}") from None
    return True


@contextmanager
def ray_session(
    address: str | None,
    *,
    num_cpus: int,
    local_options: dict[str, Any] | None = None,
    **options: Any,
) -> Iterator[bool]:
    """:func:`connect_ray` for the length of a ``with`` block; yields whether it connected, and
    shuts Ray down afterwards only then (a local Ray's processes end with it)."""
    started = connect_ray(address, num_cpus=num_cpus, local_options=local_options, **options)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
