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
from .config import Config, load_config
from .errors import KeyMismatch, LedgerTampered, WorkspaceError
from .keys.keyring import Keyring, get_passphrase, load_public_key
from .ledger import Entry, Ledger
from .ledger.entries import _ENTRY_DOMAIN, entry_hash, verify_blob

__all__ = ["Workspace", "find_workspace", "init_workspace", "verify_master_matches", "CONFIG_FILE", "LEDGER_FILE",
           "WORKSPACE_ENV", "MASTER_CHECK_SAMPLE"]

CONFIG_FILE = "tracer.toml"
LEDGER_FILE = "tracer.db"
KEYS_DIR = "keys"
WORKSPACE_ENV = "TRACER_WORKSPACE"

LOSS_WARNING = (
    "Back up keys/ (master.key, signing.key) and remember the passphrase: "
    "if the master secret is lost, no customer can ever be identified again."
)

GENERIC_CONFIG = """\
# tracer workspace configuration. Paths are relative to this file.

[task]
num_classes = 10              # size of the model's output vector
input_shape = [1, 28, 28]     # one input, without the batch axis
input_dtype = "float32"
domain = "image"              # "image" (pixels on an 8-bit grid) or "tabular"
low = 0.0                     # input domain: a number, or one per feature
high = 1.0

[model]
factory = "mymodel:make_model"   # package.module:function returning an nn.Module
weights = "models/base.pt"       # its state_dict (loaded with weights_only=True)

[data]
# exactly one of:
loader = "mymodel:load_data"     # function returning {x_train, y_train, x_val, y_val}
# npz = "data.npz"               # arrays x_train, y_train, x_val, y_val (or x, y: split off validation)
# image_folder = "images"        # one sub-folder per class, or train/ and val/ each with them

[fingerprint]
probe_sets = 2                # independent probe sets, so one shown to a suspect can be retired
probes_per_set = 0            # 0: automatic (64 at 10 classes, more for fewer classes)

[embedding]
steps = 200                   # optimizer steps; fixed, does not grow with the dataset
learning_rate = 0.02          # peak of a one-cycle schedule (Adam)
distill_weight = 12.0         # keeps clean outputs close to the base model...
anchor_noise = 0.1            # ...on training points and on jittered copies of them
trigger_margin = 6.0          # codeword logit ahead of every other: outlives fine-tuning (`tracer evaluate`)
weight_average = 0.97         # the weights' moving average is a second candidate for the gates (0: off)
polish_steps = 40             # a missed try is first polished this long at lr / 10 (0: off),
polishes = 3                  # up to this many times, before a fresh, longer try
attempts = 5                  # tries before a gate failure is final (fresh seed; each retry 50 % longer)

[gates]
min_trigger_accuracy = 0.95   # fraction of trigger probes the copy must answer with its codeword
max_accuracy_drop = 0.005     # clean validation accuracy may drop at most this much (0.5 points)

[identify]
alpha = 1e-6                  # bound on the chance of naming any innocent customer
"""


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

    def digest(self) -> str:
        return self._digest


def _commitment_matches(master: bytes, e: Entry, public_key: Any) -> bool:
    """Recompute one issuance's trigger commitment from the master secret (after checking the record is signed)."""
    from .fingerprint import trigger_commitment

    if entry_hash(e.seq, e.kind, e.time, e.prev, e.payload) != e.hash or \
            not verify_blob(public_key, _ENTRY_DOMAIN, bytes.fromhex(e.hash), e.signature):
        raise LedgerTampered(f"issuance record {e.seq} is modified or not signed by this workspace's key", entry=e.seq,
                             hint="run `tracer ledger verify`")
    p = e.payload
    sets = [_RecordedSet(d) for d in p["probe_sets"]]
    num_classes = int(p["parameters"]["task"]["num_classes"])
    return trigger_commitment(master, p["customer_id"], cast(list, sets), num_classes) == p["trigger_commitment"]


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
        except (KeyError, TypeError, ValueError):
            raise LedgerTampered(f"issuance record {seq} is malformed", entry=seq, hint="run `tracer ledger verify`") from None
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
) -> Workspace:
    """Create a workspace: configuration, encrypted keys, and a ledger with its genesis entry.

    Refuses to touch a folder that already holds a workspace or keys.
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
    atomic_write_bytes(root / CONFIG_FILE, config_text.encode("utf-8"))
    return Workspace(root)
