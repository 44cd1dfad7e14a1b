"""A tracer workspace: ``tracer.toml``, ``keys/`` and the ledger ``tracer.db``.

Commands find their workspace from an explicit folder, else ``TRACER_WORKSPACE``,
else the current folder or one of its parents (as git does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from ._files import atomic_write_bytes
from .config import Config, annotated_toml, load_config
from .errors import WorkspaceError
from .keys.keyring import Keyring, get_passphrase
from .ledger import Ledger

__all__ = ["Workspace", "find_workspace", "init_workspace", "CONFIG_FILE", "LEDGER_FILE", "WORKSPACE_ENV", "GENERIC_CONFIG", "STARTER_MODULE"]

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

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_path)

    def unlock(self, *, passphrase: str | None = None, master: bool = True, signing: bool = True) -> Keyring:
        return Keyring.open(self.keys_dir, passphrase=passphrase or get_passphrase(), master=master, signing=signing)

    def public_key_pem(self) -> bytes:
        return Keyring.public_key_pem(self.keys_dir)


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
    root.mkdir(parents=True, exist_ok=True)
    keyring = Keyring.create(root / KEYS_DIR, passphrase=passphrase, scrypt=scrypt)
    (root / KEYS_DIR / ".gitignore").write_text("*\n!.gitignore\n")
    ledger_tmp = root / (LEDGER_FILE + ".init")
    try:
        with Ledger(ledger_tmp, create=True) as ledger:
            ledger.append("genesis", {
                "tracer_version": __version__,
                "derivation": "tracer/v1",
                "public_key": Keyring.public_key_pem(root / KEYS_DIR).decode("ascii"),
            }, key=keyring.signing_key)
            ledger.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            ledger.db.conn.execute("PRAGMA journal_mode = DELETE")
        os.replace(ledger_tmp, root / LEDGER_FILE)
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
    (root / "models").mkdir(exist_ok=True)
    if not (root / STARTER_MODULE).exists():
        atomic_write_bytes(root / STARTER_MODULE, STARTER_CODE.encode("utf-8"))
