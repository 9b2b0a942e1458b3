"""CurveZMQ keys: the broker's pair, client pairs and the two allow-lists.

Layout of a keys directory (made by ``vnet keys init`` / ``vnet keys add``)::

    broker.key, broker.key_secret   the broker's certificate
    private/NAME.key{,_secret}      each client's certificate (give it to NAME)
    allowed/NAME.key                public keys that may connect at all
    control/NAME.key                public keys that may also publish control
                                    topics (plans, desired states, moves)

Files are ZeroMQ's own certificate format (zmq.auth.create_certificates).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

BROKER = "broker"


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85
    secret: bytes  # z85


class MissingKey(LookupError):
    """A key the configuration names is missing."""


def _name_ok(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name == BROKER:
        raise ValueError(f"key name {name!r} must be non-empty, not 'broker', with no '/'")


def init(directory: Path) -> None:
    """Create the directory and the broker's key pair (kept if present)."""
    for sub in ("private", "allowed", "control"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / "private").chmod(0o700)
    if not (directory / f"{BROKER}.key_secret").exists():
        zmq.auth.create_certificates(directory, BROKER)


def add(directory: Path, name: str, control: bool = False) -> KeyPair:
    """Make a client key pair and allow-list it (and for control if asked)."""
    _name_ok(name)
    init(directory)
    private = directory / "private"
    if not (private / f"{name}.key_secret").exists():
        zmq.auth.create_certificates(private, name)
    shutil.copyfile(private / f"{name}.key", directory / "allowed" / f"{name}.key")
    control_file = directory / "control" / f"{name}.key"
    if control:
        shutil.copyfile(private / f"{name}.key", control_file)
    else:
        control_file.unlink(missing_ok=True)
    return client_pair(directory, name)


def _load(path: Path) -> KeyPair:
    if not path.exists():
        raise MissingKey(f"no key file {path}: run `vnet keys add` first")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise MissingKey(f"{path} holds no secret key")
    return KeyPair(public, secret)


def broker_pair(directory: Path) -> KeyPair:
    return _load(directory / f"{BROKER}.key_secret")


def broker_public(directory: Path) -> bytes:
    path = directory / f"{BROKER}.key"
    if not path.exists():
        raise MissingKey(f"no broker key {path}: run `vnet keys init {directory}`")
    public, _ = zmq.auth.load_certificate(path)
    return public


def client_pair(directory: Path, name: str) -> KeyPair:
    return _load(directory / "private" / f"{name}.key_secret")


def _names(folder: Path) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.key")):
            public, _ = zmq.auth.load_certificate(path)
            out[public] = path.stem
    return out


@dataclass(frozen=True)
class AllowList:
    """Who may connect (public key -> name) and which names may send control."""

    allowed: dict[bytes, str]
    control: frozenset[str]

    @classmethod
    def load(cls, directory: Path) -> AllowList:
        return cls(_names(directory / "allowed"), frozenset(_names(directory / "control").values()))
