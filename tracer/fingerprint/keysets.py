"""Which key sets a workspace's copies carry, by style, and where each comes from.

A *key set* is what a codeword is drawn over: a noise probe set of style
``uniform-grid/v1`` (:mod:`.probes`: ``ps1``, ``ps2``, ..., re-derived from the
master secret on demand) or the key pool of a natural style (:mod:`.pool`:
``pool1`` for ``natural-mix/v1``, ``pool2`` for ``/v2``, ``pool3`` for ``/v3``, stored
encrypted in ``keys/``). Issuance embeds the
sets of the configured style; identification and probing read, per issuance
record, the sets that copy carries, so workspaces holding copies of both
styles identify each by its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import ConfigError, KeyFileError
from .pool import POOL_ID, KeyPool, build_pool, load_pool, pool_path, pool_style, save_pool, style_pool_id
from .probes import PROBE_STYLE, ProbeSet, make_probe_set, probe_set_ids

__all__ = ["is_pool", "issuing_key_sets", "key_set", "open_pool", "set_style", "style_pool_id"]


def is_pool(set_id: str) -> bool:
    return set_id.startswith("pool")


def set_style(set_id: str) -> str:
    return pool_style(set_id) if is_pool(set_id) else PROBE_STYLE


def open_pool(config: Config, master: bytes, keys_dir: Path, *, pool_id: str = POOL_ID,
              data: Callable[[], tuple[np.ndarray, np.ndarray, str]] | None = None,
              recorded_digests: Iterable[str] = ()) -> KeyPool:
    """The stored pool, or (when ``data`` is given and none is stored) the pool built from the vendor's data and stored.

    Its size is ``[fingerprint] pool_size``, or with 0 the automatic size for the training rows
    (:meth:`~tracer.config.FingerprintConfig.pool_size_for`), fixed from then on by the stored pool.

    ``data`` returns (x_train, y_train, dataset fingerprint). A rebuilt pool must match every
    digest the ledger recorded for it (``recorded_digests``): a dataset that changed since
    copies were issued cannot silently give other keys.
    """
    path = pool_path(keys_dir, pool_id)
    if path.exists() or data is None:
        return load_pool(path, master, pool_id)
    x_train, y_train, fingerprint = data()
    size = config.fingerprint.pool_size_for(len(y_train))
    if config.fingerprint.keys_per_probe > size:
        raise ConfigError(f"[fingerprint] keys_per_probe is {config.fingerprint.keys_per_probe}, more than the {size} keys of the pool "
                          f"built from {len(y_train)} training rows", hint="lower keys_per_probe in tracer.toml")
    pool = build_pool(master, config.task, x_train, y_train, size=size, dataset_fingerprint=fingerprint, pool_id=pool_id)
    wrong = sorted(set(recorded_digests) - {pool.digest()})
    if wrong:
        raise KeyFileError(f"{path} is missing, and the keys rebuilt from today's data differ from the ones issued copies carry",
                           hint="restore keys/ from your backup (the dataset changed since those copies were issued)")
    save_pool(path, master, pool)
    return pool


def key_set(config: Config, master: bytes, keys_dir: Path, set_id: str, **pool_options) -> ProbeSet:
    """One key set by id: a pool from ``keys/``, a noise probe set re-derived from the master secret."""
    if is_pool(set_id):
        return open_pool(config, master, keys_dir, pool_id=set_id, **pool_options)
    return make_probe_set(master, set_id, config.task, config.probes_per_set)


def issuing_key_sets(config: Config, master: bytes, keys_dir: Path, *,
                     data: Callable[[], tuple[np.ndarray, np.ndarray, str]],
                     recorded_digests: Iterable[str] = ()) -> list[ProbeSet]:
    """The key sets a new copy embeds under ``[fingerprint] style``.

    natural-mix keys are refused for two-class tasks before anything is built: every key's label set
    is then both classes, so each key whose label goes against the base model bends the class boundary
    where real inputs lie (tabular example: 3.5-10 clean points lost at every pool size tried,
    bench/results/keys_tabular_natural.txt), and the issuance would only fail its clean gate, slowly.
    """
    pool_id = style_pool_id(config.fingerprint.style)
    if pool_id is not None:
        if config.task.num_classes < 3:
            raise ConfigError(f"[fingerprint] style {config.fingerprint.style} needs 3 or more classes; this task has {config.task.num_classes}",
                              hint='set style = "uniform-grid/v1" in tracer.toml (noise probe sets: the style for two-class tasks)')
        return [open_pool(config, master, keys_dir, pool_id=pool_id, data=data, recorded_digests=recorded_digests)]
    return [make_probe_set(master, sid, config.task, config.probes_per_set) for sid in probe_set_ids(config.fingerprint.probe_sets)]
