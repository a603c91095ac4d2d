"""CURVE key files and ``resetfree-keys``.

``resetfree-keys generate DIR`` writes ZeroMQ certificate files
(``zmq.auth.create_certificates`` format) for three roles and an allow list::

    DIR/learner.key   DIR/learner.key_secret     the learner's server key pair
    DIR/runtime.key   DIR/runtime.key_secret     the runtime's key pair
    DIR/operator.key  DIR/operator.key_secret    operator tools (control channel)
    DIR/authorized_clients/{runtime,operator}.key   public keys servers accept

Servers (learner uplink/weights, control servers) use their ``*.key_secret`` and the
``authorized_clients`` directory; clients use their own ``*.key_secret`` and pin the
server's ``*.key``. Copy only what each machine needs: the runtime PC gets
``runtime.key_secret``, ``learner.key`` and ``authorized_clients/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("learner", "runtime", "operator")
ALLOW_DIR = "authorized_clients"
_CLIENT_ROLES: tuple[str, ...] = ("runtime", "operator")


def _exists(path: Path, field: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{field}: no such key file {path}")


@dataclass(frozen=True, kw_only=True)
class CurveServerKeys:
    """Keys of a CURVE server socket (bind side)."""

    secret_key_file: Path
    """The server's ``*.key_secret`` certificate (holds both its keys)."""
    allowed_clients_dir: Path
    """Directory of client ``*.key`` certificates allowed to connect (the allow list)."""

    def __post_init__(self) -> None:
        _exists(self.secret_key_file, "secret_key_file")
        if not Path(self.allowed_clients_dir).is_dir():
            raise ValueError(f"allowed_clients_dir: no such directory {self.allowed_clients_dir}")


@dataclass(frozen=True, kw_only=True)
class CurveClientKeys:
    """Keys of a CURVE client socket (connect side), with the server's key pinned."""

    secret_key_file: Path
    """The client's ``*.key_secret`` certificate."""
    server_public_key_file: Path
    """The server's ``*.key`` certificate; only that server is accepted."""

    def __post_init__(self) -> None:
        _exists(self.secret_key_file, "secret_key_file")
        _exists(self.server_public_key_file, "server_public_key_file")


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ProtocolError(f"key file {path}: unreadable ({e})") from e
    if secret is None:
        raise ProtocolError(f"key file {path}: holds no secret key (use the *.key_secret file)")
    return public, secret


def apply_server_keys(sock: zmq.Socket, keys: CurveServerKeys) -> None:
    """Makes ``sock`` a CURVE server with ``keys``; call before bind. Raises ProtocolError."""
    public, secret = _load_pair(keys.secret_key_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_client_keys(sock: zmq.Socket, keys: CurveClientKeys) -> None:
    """Makes ``sock`` a CURVE client pinned to the server key; call before connect. Raises ProtocolError."""
    public, secret = _load_pair(keys.secret_key_file)
    try:
        server_public, _ = zmq.auth.load_certificate(keys.server_public_key_file)
    except (OSError, ValueError) as e:
        raise ProtocolError(f"key file {keys.server_public_key_file}: unreadable ({e})") from e
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def server_keys(directory: Path, role: str = "learner") -> CurveServerKeys:
    """Returns the server keys of ``role`` from a ``generate`` directory; raises ValueError if missing."""
    directory = Path(directory)
    return CurveServerKeys(secret_key_file=directory / f"{role}.key_secret",
                           allowed_clients_dir=directory / ALLOW_DIR)


def client_keys(directory: Path, role: str = "runtime", server: str = "learner") -> CurveClientKeys:
    """Returns ``role``'s client keys pinned to ``server``'s public key; raises ValueError if missing."""
    directory = Path(directory)
    return CurveClientKeys(secret_key_file=directory / f"{role}.key_secret",
                           server_public_key_file=directory / f"{server}.key")


def generate(directory: Path, *, force: bool = False) -> dict[str, Path]:
    """Writes key pairs for every role and the allow list into ``directory``.

    Returns role → secret key file. Raises FileExistsError when keys exist and not
    ``force``. Blocks on file I/O only.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [r for r in ROLES if (directory / f"{r}.key_secret").exists()]
    if existing and not force:
        raise FileExistsError(f"{directory} already holds keys for {existing} (use --force to replace)")
    allow = directory / ALLOW_DIR
    if allow.exists():
        shutil.rmtree(allow)
    allow.mkdir()
    out: dict[str, Path] = {}
    for role in ROLES:
        public_file, secret_file = zmq.auth.create_certificates(directory, role)
        os.chmod(secret_file, 0o600)
        out[role] = Path(secret_file)
        if role in _CLIENT_ROLES:
            shutil.copy(public_file, allow / Path(public_file).name)
    logger.info("wrote CURVE keys for %s to %s", ", ".join(ROLES), directory)
    return out


def main(argv: list[str] | None = None) -> int:
    """``resetfree-keys``: generate or show CURVE keys. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="resetfree-keys", description="ZeroMQ CURVE keys for resetfree.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write learner/runtime/operator key pairs and the allow list")
    gen.add_argument("directory", type=Path, help="where to write the key files")
    gen.add_argument("--force", action="store_true", help="replace existing keys")
    show = sub.add_parser("show", help="print the public keys in a key directory")
    show.add_argument("directory", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "generate":
        try:
            files = generate(args.directory, force=args.force)
        except FileExistsError as e:
            print(f"resetfree-keys: {e}", file=sys.stderr)
            return 1
        for role, path in files.items():
            print(f"{role}: {path}")
        return 0
    for cert in sorted(Path(args.directory).glob("*.key")):
        public, _ = zmq.auth.load_certificate(cert)
        print(f"{cert.stem}: {public.decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
