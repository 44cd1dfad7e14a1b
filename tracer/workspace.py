"""A tracer workspace: ``tracer.toml``, ``keys/`` and the ledger ``tracer.db``.

Commands find their workspace from an explicit folder, else ``TRACER_WORKSPACE``,
else the current folder or one of its parents (as git does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import __version__
from ._files import atomic_write_bytes, create_private_file, ensure_dir
from .config import Config, annotated_toml, load_config
from .errors import KeyMismatch, LedgerTampered, WorkspaceError
from .keys.keyring import Keyring, get_passphrase, load_public_key
from .ledger import Entry, Ledger
from .ledger.entries import _ENTRY_DOMAIN, entry_hash, verify_blob

__all__ = ["Workspace", "find_workspace", "init_workspace", "verify_master_matches", "CONFIG_FILE", "LEDGER_FILE",
           "WORKSPACE_ENV", "MASTER_CHECK_SAMPLE", "GENERIC_CONFIG", "STARTER_MODULE"]

CONFIG_FILE = "tracer.toml"
LEDGER_FILE = "tracer.db"
KEYS_DIR = "keys"
WORKSPACE_ENV = "TRACER_WORKSPACE"

LOSS_WARNING = (
    "Back up keys/ (master.key, signing.key) and remember the passphrase: "
    "if the master secret is lost, no customer can ever be identified again."
)

STARTER_MODULE = "mymodel.py"

#: The ``tracer init`` template: every key with its default, rendered from the configuration model
#: itself (tracer/config.py), so the template, the README's annotated block and the checks agree.
GENERIC_CONFIG = (
    "# tracer workspace configuration. Paths are relative to this file.\n"
    f"# {STARTER_MODULE} beside it is a stub that `tracer init` wrote: fill in make_model() and load_data(),\n"
    "# save your trained weights to models/base.pt, and adjust [task] to your model.\n\n"
) + annotated_toml()

#: The starter module named by GENERIC_CONFIG (model.factory and data.loader); until it is filled in,
#: each function raises a one-line ConfigError with a hint about this file (exit 3, no traceback).
STARTER_CODE = '''\
"""Your model and data, for tracer: fill in the two functions below.

`tracer init` wrote this stub beside tracer.toml, which names both functions:
    [model] factory = "mymodel:make_model"   weights = "models/base.pt"
    [data]  loader  = "mymodel:load_data"
The workspace folder is importable, so this file may import your own code from here.
Then adjust [task] in tracer.toml (num_classes, input_shape, low, high) and run
`tracer issue --customer NAME`.
"""

from tracer.errors import ConfigError

HINT = ("mymodel.py beside tracer.toml is the stub `tracer init` wrote: make make_model() return your "
        "torch nn.Module and load_data() your arrays, then save the trained weights to models/base.pt")


def make_model():
    """Return your model's architecture, untrained: tracer loads models/base.pt into it.

    Its input is [batch, *task.input_shape], its output [batch, task.num_classes] (logits).
    Save the trained weights once with: torch.save(model.state_dict(), "models/base.pt")

    Example:
        from torch import nn
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))
    """
    raise ConfigError("fill me in: edit mymodel.py: make_model() must return your torch nn.Module", hint=HINT)


def load_data():
    """Return your data as numpy arrays: {"x_train", "y_train", "x_val", "y_val"}.

    x_*: float inputs shaped [N, *task.input_shape] within [task.low, task.high];
    y_*: integer class labels 0..num_classes-1. Optionally also "x_attack", "y_attack":
    data the issued copies never saw, which `tracer evaluate` attacks with.
    Or return {"x": ..., "y": ...}: data.validation_fraction of it becomes validation data.
    """
    raise ConfigError("fill me in: edit mymodel.py: load_data() must return your training and validation arrays", hint=HINT)
'''


@dataclass
class Workspace:
    root: Path
    _config: Config | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)  # accept str too

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def keys_dir(self) -> Path:
        return self.root / KEYS_DIR

    @property
    def cache_dir(self) -> Path:
        """Encrypted caches of re-derivable material (safe to delete)."""
        return self.root / ".tracer" / "cache"

    @property
    def config(self) -> Config:
        """Parsed lazily: ledger commands work even while the model section is unfinished."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def ledger(self, *, readonly: bool = False) -> Ledger:
        """The ledger; ``readonly`` for commands that only read (they then work on a read-only copy)."""
        return Ledger(self.ledger_path, readonly=readonly)

    def unlock(self, *, passphrase: str | None = None, master: bool = True, signing: bool = True) -> Keyring:
        """Decrypt the keys and check that they are this ledger's, before anything is scored or appended.

        The signing key must be the one the genesis entry names, and the master secret must
        re-derive the trigger commitments of the issued customers (:func:`verify_master_matches`).
        Raises :class:`KeyMismatch` (exit 3) otherwise.
        """
        keyring = Keyring.open(self.keys_dir, passphrase=passphrase or get_passphrase(), master=master, signing=signing)
        if self.ledger_path.exists() and (master or signing):
            public_key = keyring.public_key if signing else load_public_key(self.public_key_pem())
            with self.ledger(readonly=True) as ledger:
                ledger.check_bound_to(public_key)
                if master:
                    verify_master_matches(ledger, keyring, public_key=public_key)
        return keyring

    def public_key_pem(self) -> bytes:
        return Keyring.public_key_pem(self.keys_dir)


#: Issuance records checked by :func:`verify_master_matches` when there are more.
MASTER_CHECK_SAMPLE = 16


def _sample(items: list[int], k: int) -> list[int]:
    """All of ``items`` if at most ``k``, else ``k`` of them evenly spread, first and last included."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


class _RecordedSet:
    """A probe set as an issuance record describes it (id, size, digest): enough to recompute a commitment."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.id, self.size, self._digest = str(doc["id"]), int(doc["size"]), str(doc["digest"])
        self._bound = int(doc["bound"]) if "bound" in doc else None  # key pools record their label-set size

    def digest(self) -> str:
        return self._digest

    def bound(self, num_classes: int) -> int:
        return num_classes if self._bound is None else self._bound


def _commitment_matches(master: bytes, e: Entry, public_key: Any) -> bool:
    """Recompute one issuance's trigger commitment (and rank-code commitment) from the master secret (after checking the record is signed)."""
    from .fingerprint import trigger_commitment

    if entry_hash(e.seq, e.kind, e.time, e.prev, e.payload) != e.hash or \
            not verify_blob(public_key, _ENTRY_DOMAIN, bytes.fromhex(e.hash), e.signature):
        raise LedgerTampered(f"issuance record {e.seq} is modified or not signed by this workspace's key", entry=e.seq,
                             hint="run `tracer ledger verify`")
    p = e.payload
    sets = [_RecordedSet(d) for d in p["probe_sets"]]
    num_classes = int(p["parameters"]["task"]["num_classes"])
    if trigger_commitment(master, p["customer_id"], cast(list, sets), num_classes) != p["trigger_commitment"]:
        return False
    if "rank_code" in p:  # the copy's rank code is committed to as well (rank-code/v1)
        from .fingerprint.rankcode import rank_commitment

        return rank_commitment(master, p["customer_id"], num_classes) == p["rank_code"]["commitment"]
    return True


def verify_master_matches(ledger: Ledger, keyring: Keyring, *, public_key: Any = None, sample: int = MASTER_CHECK_SAMPLE) -> int:
    """Raise :class:`KeyMismatch` unless the master secret re-derives the recorded trigger commitments.

    Checks every issuance record that carries a commitment when there are at most ``sample``
    (16) of them, else ``sample`` records evenly spread over the ledger, first and last
    included (deterministic). A wrong master key fails on the first record checked: with it,
    identify would score every customer against codewords nobody was given and clear them
    all. Each checked record's own hash and signature are verified first, so a tampered
    record reads as tampering (LedgerTampered, exit 1), not as a wrong key. Returns the
    number of records checked. ``public_key`` (default: the keyring's) checks the records' signatures.
    """
    public_key = keyring.public_key if public_key is None else public_key
    seqs = ledger.issuance_seqs()
    checked = 0
    for seq in _sample(seqs, sample):
        e = ledger.get(seq)
        if "trigger_commitment" not in e.payload:
            continue  # a record made before commitments existed
        try:
            ok = _commitment_matches(keyring.master, e, public_key)
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerTampered(f"issuance record {seq} is malformed", entry=seq, hint="run `tracer ledger verify`") from exc
        if not ok:
            raise KeyMismatch(
                f"keys/master.key is not the master secret this ledger's copies were issued with "
                f"(issuance record {seq} of {e.payload.get('customer_id')!r} does not re-derive)",
                hint="restore this workspace's own keys/master.key from your backup",
            )
        checked += 1
    return checked


def _is_workspace(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / LEDGER_FILE).is_file()


def find_workspace(explicit: str | os.PathLike | None = None) -> Workspace:
    """Locate the workspace: explicit folder, else $TRACER_WORKSPACE, else cwd or a parent."""
    hint = "run `tracer init DIR` to create one, or pass --workspace DIR"
    if explicit is None:
        explicit = os.environ.get(WORKSPACE_ENV) or None
    if explicit is not None:
        root = Path(explicit).expanduser().resolve()
        if not _is_workspace(root):
            raise WorkspaceError(f"{root} is not a tracer workspace (no {CONFIG_FILE} and {LEDGER_FILE})", hint=hint)
        return Workspace(root)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_workspace(folder):
            return Workspace(folder)
    raise WorkspaceError("not inside a tracer workspace", hint=hint)


def init_workspace(
    root: str | os.PathLike,
    *,
    passphrase: str,
    config_text: str = GENERIC_CONFIG,
    scrypt: dict[str, int] | None = None,
    starter: bool | None = None,
) -> Workspace:
    """Create a workspace: configuration, encrypted keys, and a ledger with its genesis entry.

    Refuses to touch a folder that already holds a workspace or keys. With the generic template
    (or ``starter=True``) it also writes the stub ``mymodel.py`` that the template names, unless the
    folder already has one (the vendor's own is never overwritten), and a ``models/`` folder.
    """
    root = Path(root).expanduser().resolve()
    for existing in (root / CONFIG_FILE, root / LEDGER_FILE, root / KEYS_DIR / "master.key"):
        if existing.exists():
            raise WorkspaceError(f"{existing} already exists; refusing to overwrite a workspace", hint="choose an empty folder")
    ensure_dir(root)
    keyring = Keyring.create(root / KEYS_DIR, passphrase=passphrase, scrypt=scrypt)
    atomic_write_bytes(root / KEYS_DIR / ".gitignore", b"*\n!.gitignore\n")
    ledger_tmp = root / (LEDGER_FILE + ".init")
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(str(ledger_tmp) + suffix).unlink(missing_ok=True)
        create_private_file(ledger_tmp)  # SQLite gives -wal and -shm the main file's mode
        with Ledger(ledger_tmp, create=True) as ledger:  # WAL mode, set once here
            ledger.append("genesis", {
                "tracer_version": __version__,
                "derivation": "tracer/v1",
                "public_key": Keyring.public_key_pem(root / KEYS_DIR).decode("ascii"),
            }, key=keyring.signing_key)
            ledger.wal_checkpoint()
        os.replace(ledger_tmp, root / LEDGER_FILE)  # closed: its -wal and -shm are gone
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(ledger_tmp) + suffix).unlink(missing_ok=True)
    if starter is None:
        starter = config_text is GENERIC_CONFIG
    if starter:
        _write_starter(root)
    atomic_write_bytes(root / CONFIG_FILE, config_text.encode("utf-8"))
    return Workspace(root)


def _write_starter(root: Path) -> None:
    """The stub model module beside tracer.toml, so a fresh workspace fails with "fill me in", not an ImportError."""
    ensure_dir(root / "models")
    if not (root / STARTER_MODULE).exists():
        atomic_write_bytes(root / STARTER_MODULE, STARTER_CODE.encode("utf-8"))
