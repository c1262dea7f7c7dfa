"""API keys: who is calling the gateway, as a tenant and a set of roles.

Keys come from two sources; when both are given their union is used:

``STEPBUS_API_KEYS``
    Comma-separated ``key:tenant[:roles]`` entries, roles joined by ``+``::

        STEPBUS_API_KEYS=k3Jd...:acme,Zq9u...:globex:ops+admin

    Meant for development and CI: the plaintext keys are in the environment (only their SHA-256
    digests are kept in memory). Their key id is ``key-<first 8 hex of sha256(key)>``.

``STEPBUS_API_KEYS_FILE``
    A JSON file (a mounted secret) holding salted hashes, never keys::

        {"keys": [{"id": "ci-bot", "tenant": "acme", "roles": ["ops"], "hash": "sha256$..."}]}

    `KeyRing.reload_if_changed` re-reads it when it changes, so keys rotate without a restart.
    ``python -m stepbus_gateway.keys`` makes keys and their entries.

Hashes are ``sha256$<salt hex>$<hex of sha256(salt + key)>`` or
``scrypt$<n>$<r>$<p>$<salt hex>$<hex of scrypt(key, salt)>``. One salted SHA-256 is the right
cost here: a slow KDF protects low-entropy secrets such as passwords against offline guessing,
while API keys are random tokens (``secrets.token_urlsafe(32)``, 256 bits; at least 16
characters, about 96 bits, are required) that no guessing recovers, fast hash or not. A slow
hash would instead make every request pay for it. scrypt is accepted for operators whose policy
asks for a slow hash; thanks to the cache its cost is paid once per distinct key presented.

Verification: the presented key's unsalted SHA-256 digest (kept in memory only) looks up the
``STEPBUS_API_KEYS`` keys, then an LRU of earlier verdicts. On a miss, each file entry's hash of
the key is computed with that entry's salt and compared with `hmac.compare_digest` (SHA-256
entries first, scrypt entries after). The verdict is cached; known and unknown keys have caches
of their own (each at most `CACHE_MAX` entries), so a flood of bad keys costs one hash pass per
distinct key and cannot evict the good ones. A reload clears both.

Nothing here logs, or puts in an error message, a key or a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import GatewayError
from .settings import TENANT_PATTERN

__all__ = ["CACHE_MAX", "KeyRing", "KeysError", "Principal", "file_entry", "hash_key", "key_id"]

log = logging.getLogger(__name__)

KEY_MIN_CHARS = 16
KEY_MAX_CHARS = 256
MAX_ROLES = 32
CACHE_MAX = 4096
"""Most verdicts kept by each of the two caches (known keys, unknown keys)."""
SCRYPT_PARAMS = (2**14, 8, 1)
"""``(n, r, p)`` of the scrypt hashes `hash_key` makes: about 16 MiB and tens of ms."""

ROLE_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_KEY = re.compile(r"[A-Za-z0-9._~-]+")
_TENANT = re.compile(TENANT_PATTERN)
_ROLE = re.compile(ROLE_PATTERN)
_ID = re.compile(ID_PATTERN)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_INT = re.compile(r"[0-9]{1,10}")
_SCRYPT_MAX_MEMORY = 256 * 2**20
_ENV = "STEPBUS_API_KEYS"
_FILE_FIELDS = frozenset({"keys"})
_ENTRY_FIELDS = frozenset({"id", "tenant", "roles", "hash"})
_ENTRY_REQUIRED = frozenset({"id", "tenant", "hash"})
_HASH_FORMATS = "sha256$<salt hex>$<digest hex> or scrypt$<n>$<r>$<p>$<salt hex>$<digest hex>"


@dataclass(frozen=True)
class Principal:
    """Who sent a request, as its API key says.

    Attributes:
        tenant: The tenant the key acts for.
        roles: The key's roles (possibly none).
        key_id: A non-secret name of the key for logs, metrics and rate limits: the file entry's
            ``id``, or ``key-<first 8 hex of sha256(key)>`` for ``STEPBUS_API_KEYS``.
    """

    tenant: str
    roles: frozenset[str]
    key_id: str


class KeysError(GatewayError, ValueError):
    """A bad ``STEPBUS_API_KEYS`` value, keys file or key: fix the configuration (no retry).

    The message says what is wrong and where (entry number, ``keys[i]``, JSON line), never a key
    or a hash.
    """


def key_id(key: str) -> str:
    """The key id of a key without a named entry: ``key-<first 8 hex of sha256(key)>``."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def hash_key(key: str, *, scrypt: bool = False) -> str:
    """The ``hash`` of a keys-file entry for ``key``, with a fresh 16-byte salt.

    Args:
        key: The API key, 16-256 characters of ``[A-Za-z0-9._~-]``.
        scrypt: Make a slow scrypt hash (`SCRYPT_PARAMS`) instead of one salted SHA-256.

    Raises:
        KeysError: The key is too short, too long or has other characters.
    """
    _check_key(key, "the key")
    salt = secrets.token_bytes(16)
    if scrypt:
        n, r, p = SCRYPT_PARAMS
        digest = _scrypt(key.encode(), salt, n, r, p, 32)
        return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"
    return f"sha256${salt.hex()}${hashlib.sha256(salt + key.encode()).hexdigest()}"


def file_entry(
    key: str,
    *,
    tenant: str,
    roles: Sequence[str] = (),
    entry_id: str | None = None,
    scrypt: bool = False,
) -> dict[str, Any]:
    """The keys-file entry (``id``, ``tenant``, ``roles``, ``hash``) that admits ``key``.

    ``entry_id`` defaults to `key_id` of the key. Raises `KeysError` for an invalid key, tenant,
    role or id.
    """
    where = "the entry"
    entry_id = key_id(key) if entry_id is None else entry_id
    _check_id(entry_id, where)
    _check_tenant(tenant, where)
    _check_roles(roles, where)
    return {
        "id": entry_id,
        "tenant": tenant,
        "roles": list(roles),
        "hash": hash_key(key, scrypt=scrypt),
    }


class KeyRing:
    """The API keys the gateway accepts; build it with `from_settings`.

    `authenticate` is safe to call from several threads (a scrypt miss can take tens of
    milliseconds, see `has_slow_hashes`); `reload_if_changed` is meant for one caller at a time.
    A key ring is always truthy, even without keys: test `open` for open development mode.
    """

    def __init__(
        self,
        env_keys: dict[bytes, Principal],
        path: str | None,
        *,
        reload_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._env = env_keys
        self._path = path
        self._file: tuple[_Hashed, ...] = ()
        self._signature: object = None
        self._reload_seconds = reload_seconds
        self._clock = clock
        self._next_check = clock() + reload_seconds
        self._lock = threading.Lock()
        self._generation = 0
        self._known: OrderedDict[bytes, Principal] = OrderedDict()
        self._unknown: OrderedDict[bytes, None] = OrderedDict()

    @classmethod
    def from_settings(
        cls,
        api_keys: str | None,
        api_keys_file: str | None,
        *,
        reload_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> KeyRing:
        """Load ``STEPBUS_API_KEYS`` and the file ``STEPBUS_API_KEYS_FILE`` names.

        Args:
            api_keys: ``key:tenant[:roles]`` entries; ``None`` or blank: none.
            api_keys_file: Path of the JSON keys file; ``None`` or blank: none.
            reload_seconds: Least time between two looks at the file's metadata.
            clock: A monotonic clock in seconds (tests pass a fake one).

        Raises:
            KeysError: A source is invalid or the file cannot be read: the gateway must not
                start (an empty file is valid and admits nobody).
        """
        env = _parse_env(api_keys) if api_keys and api_keys.strip() else {}
        path = api_keys_file if api_keys_file and api_keys_file.strip() else None
        ring = cls(env, path, reload_seconds=reload_seconds, clock=clock)
        if path is not None:
            ring._signature = _signature(path)
            ring._file = _parse_file(path)
        if ring.open:
            log.warning("api keys: none configured, open development mode")
        else:
            file_part = f", {len(ring._file)} from file {path}" if path is not None else ""
            log.info(
                "api keys: %d keys for %d tenants (%d from %s%s)",
                len(ring),
                ring._tenants(),
                len(env),
                _ENV,
                file_part,
            )
        return ring

    @property
    def open(self) -> bool:
        """True when no key source is configured at all (open development mode)."""
        return not self._env and self._path is None

    @property
    def has_slow_hashes(self) -> bool:
        """True when some file entry is scrypt: a cache miss then takes tens of milliseconds."""
        return any(entry.scrypt is not None for entry in self._file)

    @property
    def cache_size(self) -> int:
        """Verdicts cached now (known plus unknown keys); at most ``2 * CACHE_MAX``."""
        return len(self._known) + len(self._unknown)

    def __len__(self) -> int:
        """The number of keys, from both sources."""
        return len(self._env) + len(self._file)

    def __bool__(self) -> bool:
        return True

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer <key>`` header value.

        The scheme is case-insensitive and must be followed by exactly one token. Returns
        ``None`` for a missing or malformed header and for an unknown key (also in open mode,
        which has no keys: the caller decides what open mode admits).
        """
        key = _bearer_token(authorization)
        if key is None:
            return None
        raw = key.encode("ascii")
        digest = hashlib.sha256(raw).digest()
        principal = self._env.get(digest)
        if principal is not None or not self._file:
            return principal
        with self._lock:
            entries, generation = self._file, self._generation
            principal = self._known.get(digest)
            if principal is not None:
                self._known.move_to_end(digest)
                return principal
            if digest in self._unknown:
                self._unknown.move_to_end(digest)
                return None
        # Outside the lock: scrypt entries make this slow.
        principal = next((entry.principal for entry in entries if entry.matches(raw)), None)
        with self._lock:
            if generation == self._generation:  # else reloaded meanwhile: the verdict may be stale
                if principal is None:
                    _remember(self._unknown, digest, None)
                else:
                    _remember(self._known, digest, principal)
        return principal

    def reload_if_changed(self) -> bool:
        """Re-read the keys file if its inode, size or mtime changed; cheap to call per request.

        Looks at the file at most every ``reload_seconds`` (monotonic clock). A file that cannot
        be read or is invalid is logged as an error and the keys loaded before stay in force
        (logged once per change of the file). Returns True when new keys were loaded; the
        verdict caches are then cleared.
        """
        if self._path is None:
            return False
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._reload_seconds
        signature = _signature(self._path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            if isinstance(signature, str):
                raise KeysError(f"keys file {self._path}: {signature}")
            entries = _parse_file(self._path)
        except KeysError as exc:
            log.error("api keys: %s; keeping the %d keys loaded before", exc, len(self))
            return False
        with self._lock:
            self._file = entries
            self._generation += 1
            self._known.clear()
            self._unknown.clear()
        log.info(
            "api keys: %d keys for %d tenants (file %s reloaded)",
            len(self),
            self._tenants(),
            self._path,
        )
        return True

    def _tenants(self) -> int:
        principals = [*self._env.values(), *(entry.principal for entry in self._file)]
        return len({principal.tenant for principal in principals})


@dataclass(frozen=True)
class _Hashed:
    """A keys-file entry: the principal and the salted hash its key must give."""

    principal: Principal
    salt: bytes
    digest: bytes
    scrypt: tuple[int, int, int] | None  # (n, r, p); None: one salted SHA-256

    def matches(self, key: bytes) -> bool:
        if self.scrypt is None:
            candidate = hashlib.sha256(self.salt + key).digest()
        else:
            candidate = _scrypt(key, self.salt, *self.scrypt, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


def _scrypt(key: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL needs about 128 * r * (n + p + 2) bytes; its default cap (32 MiB) is too low for
    # some parameters _parse_hash admits.
    maxmem = 128 * r * (n + p + 2) + 2**20
    return hashlib.scrypt(key, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _remember(cache: OrderedDict[bytes, Any], digest: bytes, value: Any) -> None:
    cache[digest] = value
    if len(cache) > CACHE_MAX:
        cache.popitem(last=False)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not _valid_key(token):
        return None
    return token


def _valid_key(key: str) -> bool:
    return KEY_MIN_CHARS <= len(key) <= KEY_MAX_CHARS and _KEY.fullmatch(key) is not None


def _signature(path: str) -> object:
    """What tells a changed file: (device, inode, size, mtime), or why it cannot be read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_key(key: str, where: str) -> None:
    if len(key) < KEY_MIN_CHARS:
        raise KeysError(f"{where}: a key must be at least {KEY_MIN_CHARS} characters")
    if len(key) > KEY_MAX_CHARS:
        raise KeysError(f"{where}: a key must be at most {KEY_MAX_CHARS} characters")
    if not _KEY.fullmatch(key):
        raise KeysError(f"{where}: a key may hold only letters, digits and . _ ~ -")


def _check_tenant(tenant: object, where: str) -> None:
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise KeysError(f"{where}: the tenant must be a string matching {TENANT_PATTERN}")


def _check_id(entry_id: object, where: str) -> None:
    if not isinstance(entry_id, str) or not _ID.fullmatch(entry_id):
        raise KeysError(f"{where}: the id must be a string matching {ID_PATTERN}")


def _check_roles(roles: Sequence[object], where: str) -> None:
    if len(roles) > MAX_ROLES:
        raise KeysError(f"{where}: at most {MAX_ROLES} roles, not {len(roles)}")
    for number, role in enumerate(roles, start=1):
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise KeysError(f"{where}: role {number} must be a string matching {ROLE_PATTERN}")


def _parse_env(value: str) -> dict[bytes, Principal]:
    keys: dict[bytes, Principal] = {}
    numbers: dict[bytes, int] = {}
    for number, raw in enumerate(value.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        where = f"{_ENV} entry {number}"
        parts = entry.split(":", 2)  # roles may hold ':', keys and tenants may not
        if len(parts) < 2:
            raise KeysError(f"{where}: expected key:tenant[:role+role...]")
        key, tenant = parts[0], parts[1]
        roles = parts[2].split("+") if len(parts) == 3 else []
        _check_key(key, where)
        _check_tenant(tenant, where)
        _check_roles(roles, where)
        digest = hashlib.sha256(key.encode()).digest()
        if digest in keys:
            raise KeysError(f"{where}: the same key as entry {numbers[digest]}")
        keys[digest] = Principal(tenant, frozenset(roles), key_id(key))
        numbers[digest] = number
    if not keys:
        raise KeysError(f"{_ENV}: no key:tenant entries (leave it unset for no keys)")
    return keys


def _field_name(name: str) -> str:
    # Shorter than any key or hash, so it cannot be one pasted in the wrong place.
    return repr(name) if len(name) < KEY_MIN_CHARS else f"a {len(name)}-character name"


def _check_fields(
    obj: dict[str, Any], allowed: frozenset[str], required: frozenset[str], where: str
) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        names = ", ".join(_field_name(name) for name in unknown)
        raise KeysError(f"{where}: unknown field(s) {names}")
    missing = sorted(required - set(obj))
    if missing:
        raise KeysError(f"{where}: missing field(s) {', '.join(missing)}")


def _no_duplicate_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise KeysError(f"duplicate field {_field_name(name)} in an object")
        obj[name] = value
    return obj


def _parse_file(path: str) -> tuple[_Hashed, ...]:
    where = f"keys file {path}"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise KeysError(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        doc = json.loads(data.decode("utf-8-sig"), object_pairs_hook=_no_duplicate_fields)
    except UnicodeDecodeError as exc:
        raise KeysError(f"{where}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        # exc.msg never quotes the document.
        raise KeysError(f"{where}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except KeysError as exc:
        raise KeysError(f"{where}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeysError(f'{where}: expected an object {{"keys": [...]}}')
    _check_fields(doc, _FILE_FIELDS, _FILE_FIELDS, where)
    if not isinstance(doc["keys"], list):
        raise KeysError(f"{where}: keys must be a list")
    entries: list[_Hashed] = []
    ids: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for index, entry in enumerate(doc["keys"]):
        at = f"{where}: keys[{index}]"
        if not isinstance(entry, dict):
            raise KeysError(f"{at}: expected an object")
        _check_fields(entry, _ENTRY_FIELDS, _ENTRY_REQUIRED, at)
        _check_id(entry["id"], at)
        entry_id: str = entry["id"]
        at = f"{at} (id {entry_id!r})"
        if entry_id in ids:
            raise KeysError(f"{at}: the same id as keys[{ids[entry_id]}]")
        _check_tenant(entry["tenant"], at)
        roles = entry.get("roles", [])
        if not isinstance(roles, list):
            raise KeysError(f"{at}: roles must be a list of strings")
        _check_roles(roles, at)
        salt, digest, scrypt = _parse_hash(entry["hash"], at)
        if entry["hash"].lower() in hashes:
            raise KeysError(f"{at}: the same hash as keys[{hashes[entry['hash'].lower()]}]")
        ids[entry_id] = index
        hashes[entry["hash"].lower()] = index
        principal = Principal(entry["tenant"], frozenset(roles), entry_id)
        entries.append(_Hashed(principal, salt, digest, scrypt))
    # Cheap entries first: a key of a SHA-256 entry never pays for the scrypt ones.
    return tuple(sorted(entries, key=lambda entry: entry.scrypt is not None))


def _parse_hash(text: object, at: str) -> tuple[bytes, bytes, tuple[int, int, int] | None]:
    if not isinstance(text, str):
        raise KeysError(f"{at}: the hash must be a string {_HASH_FORMATS}")
    parts = text.split("$")
    if parts[0] == "sha256" and len(parts) == 3:
        return _hex(parts[1], "salt", at, 16, 64), _hex(parts[2], "digest", at, 32, 32), None
    if parts[0] == "scrypt" and len(parts) == 6:
        if not all(_INT.fullmatch(part) for part in parts[1:4]):
            raise KeysError(f"{at}: scrypt n, r and p must be decimal integers")
        n, r, p = (int(part) for part in parts[1:4])
        if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise KeysError(f"{at}: scrypt needs n a power of 2 above 1, r in 1-64, p in 1-16")
        if 128 * r * n > _SCRYPT_MAX_MEMORY:
            raise KeysError(f"{at}: scrypt n * r * 128 must be at most 256 MiB")
        salt, digest = _hex(parts[4], "salt", at, 16, 64), _hex(parts[5], "digest", at, 16, 64)
        return salt, digest, (n, r, p)
    raise KeysError(f"{at}: the hash must be {_HASH_FORMATS}")


def _hex(text: str, what: str, at: str, least: int, most: int) -> bytes:
    if not _HEX.fullmatch(text) or not least <= len(text) // 2 <= most:
        size = f"{least}" if least == most else f"{least}-{most}"
        raise KeysError(f"{at}: the hash's {what} must be {size} bytes in hex")
    return bytes.fromhex(text)
