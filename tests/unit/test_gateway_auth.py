"""API keys of the gateway: both sources, Bearer parsing, verdict caches, reloads and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from stepbus_gateway import keys
from stepbus_gateway.auth import CACHE_MAX, KeyRing, KeysError, Principal, hash_key

KEY_A = "a" * 10 + "-Key.Alpha_0001"
KEY_B = "B~" * 8 + "bravo-0002"
KEY_C = "charlie.key.0003.xyz"


def _id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _bearer(key: str) -> str:
    return f"Bearer {key}"


def _entry(key: str, entry_id: str, tenant: str = "acme", **extra: Any) -> dict[str, Any]:
    return {"id": entry_id, "tenant": tenant, "hash": hash_key(key), **extra}


def _write(path: Path, entries: list[dict[str, Any]], bump: int = 0) -> str:
    """Write a keys file; ``bump`` moves its mtime on so a same-size rewrite is seen."""
    path.write_text(json.dumps({"keys": entries}))
    if bump:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 10**9))
    return str(path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


# --- STEPBUS_API_KEYS -------------------------------------------------------------------------


def test_env_entries_give_tenants_roles_and_key_ids() -> None:
    ring = KeyRing.from_settings(
        f" {KEY_A}:acme , ,{KEY_B}:globex:ops+admin+ns:reader,", None, reload_seconds=0
    )
    assert len(ring) == 2
    assert not ring.open
    assert ring.authenticate(_bearer(KEY_A)) == Principal("acme", frozenset(), _id(KEY_A))
    assert ring.authenticate(_bearer(KEY_B)) == Principal(
        "globex", frozenset({"ops", "admin", "ns:reader"}), _id(KEY_B)
    )
    assert ring.authenticate(_bearer(KEY_C)) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shortkey123:acme", "entry 1: a key must be at least 16 characters"),
        (f"{KEY_A}:acme,{'k' * 257}:acme", "entry 2: a key must be at most 256 characters"),
        ("bad/key/with/slashes:acme", "entry 1: a key may hold only"),
        (f"{KEY_A}", "entry 1: expected key:tenant"),
        (f"{KEY_A}:", "entry 1: the tenant must be"),
        (f"{KEY_A}:ac me", "entry 1: the tenant must be"),
        (f"{KEY_A}:{'t' * 129}", "entry 1: the tenant must be"),
        (f"{KEY_A}:acme:", "entry 1: role 1 must be"),
        (f"{KEY_A}:acme:ops++admin", "entry 1: role 2 must be"),
        (f"{KEY_A}:acme:ops+ad min", "entry 1: role 2 must be"),
        (f"{KEY_A}:acme:{'r' * 65}", "entry 1: role 1 must be"),
        (f"{KEY_A}:acme:" + "+".join(f"r{i}" for i in range(33)), "at most 32 roles"),
        (f"{KEY_A}:acme,,{KEY_B}:x,{KEY_A}:globex", "entry 4: the same key as entry 1"),
        (" , ,", "no key:tenant entries"),
    ],
)
def test_env_errors_say_what_and_where_but_not_the_key(value: str, message: str) -> None:
    with pytest.raises(KeysError) as caught:
        KeyRing.from_settings(value, None)
    text = str(caught.value)
    assert message in text
    assert text.startswith("STEPBUS_API_KEYS")
    for secret in (KEY_A, KEY_B, "shortkey123", "bad/key", "k" * 20):
        assert secret not in text
    assert isinstance(caught.value, ValueError)


def test_exactly_32_roles_are_fine() -> None:
    roles = [f"r{i}" for i in range(32)]
    ring = KeyRing.from_settings(f"{KEY_A}:acme:{'+'.join(roles)}", None)
    principal = ring.authenticate(_bearer(KEY_A))
    assert principal is not None and principal.roles == frozenset(roles)


# --- Authorization header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        KEY_A,
        f"Basic {KEY_A}",
        f"Token {KEY_A}",
        f"Bearer {KEY_A} extra",
        f"Bearer {KEY_A},{KEY_B}",
        f"Bearer\t{KEY_A}",
        f" Bearer {KEY_A}",
        f"Bearer {KEY_A[:-1]}",
        f"Bearer {KEY_C}",
        "Bearer " + "x" * 300,
    ],
)
def test_missing_malformed_or_unknown_keys_are_refused(header: str | None) -> None:
    ring = KeyRing.from_settings(f"{KEY_A}:acme", None)
    assert ring.authenticate(header) is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(scheme: str) -> None:
    ring = KeyRing.from_settings(f"{KEY_A}:acme", None)
    assert ring.authenticate(f"{scheme} {KEY_A}") is not None
    assert ring.authenticate(f"{scheme}  {KEY_A} ") is not None  # 1*SP, as RFC 9110 allows


def test_no_source_is_open_mode() -> None:
    for api_keys, api_keys_file in [(None, None), ("", ""), ("  ", None)]:
        ring = KeyRing.from_settings(api_keys, api_keys_file)
        assert ring.open
        assert len(ring) == 0
        assert ring  # truthy although empty: callers must test .open
        assert ring.authenticate(_bearer(KEY_A)) is None
        assert not ring.reload_if_changed()


def test_an_empty_keys_file_admits_nobody_and_is_not_open(tmp_path: Path) -> None:
    ring = KeyRing.from_settings(None, _write(tmp_path / "keys.json", []))
    assert not ring.open
    assert len(ring) == 0
    assert ring.authenticate(_bearer(KEY_A)) is None


# --- keys file --------------------------------------------------------------------------------


def test_file_entries_with_sha256_and_scrypt_hashes(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "keys.json",
        [
            _entry(KEY_A, "ci-bot", roles=["ops"]),
            {"id": "slow", "tenant": "globex", "roles": [], "hash": hash_key(KEY_B, scrypt=True)},
            _entry(KEY_C, "no-roles"),
        ],
    )
    ring = KeyRing.from_settings(None, path)
    assert len(ring) == 3
    assert ring.has_slow_hashes
    assert ring.authenticate(_bearer(KEY_A)) == Principal("acme", frozenset({"ops"}), "ci-bot")
    assert ring.authenticate(_bearer(KEY_B)) == Principal("globex", frozenset(), "slow")
    assert ring.authenticate(_bearer(KEY_C)) == Principal("acme", frozenset(), "no-roles")
    assert ring.authenticate(_bearer("d" * 20)) is None


def test_hash_formats() -> None:
    sha = hash_key(KEY_A).split("$")
    assert sha[0] == "sha256" and len(bytes.fromhex(sha[1])) == 16
    assert sha[2] == hashlib.sha256(bytes.fromhex(sha[1]) + KEY_A.encode()).hexdigest()
    assert hash_key(KEY_A) != hash_key(KEY_A)  # a fresh salt each time
    scheme, n, r, p, salt, digest = hash_key(KEY_A, scrypt=True).split("$")
    assert scheme == "scrypt" and len(bytes.fromhex(salt)) == 16
    expected = hashlib.scrypt(
        KEY_A.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    assert digest == expected.hex()
    with pytest.raises(KeysError, match="at least 16 characters"):
        hash_key("too-short")


def test_union_of_both_sources_and_a_key_in_both_is_fine(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.json", [_entry(KEY_A, "a-file"), _entry(KEY_C, "c-file")])
    ring = KeyRing.from_settings(f"{KEY_A}:acme,{KEY_B}:globex", path)
    assert len(ring) == 4
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.authenticate(_bearer(KEY_B)) == Principal("globex", frozenset(), _id(KEY_B))
    assert ring.authenticate(_bearer(KEY_C)) == Principal("acme", frozenset(), "c-file")


SALT = "00" * 16
SHA = f"sha256${SALT}${'11' * 32}"


def _doc(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"keys": list(entries), **top}


def _e(**fields: Any) -> dict[str, Any]:
    """A valid entry with ``fields`` changed (``None``: left out)."""
    entry = {"id": "a", "tenant": "t", "hash": SHA, **fields}
    return {name: value for name, value in entry.items() if value is not None}


def _scrypt_hash(n: Any, r: Any = 8, p: Any = 1) -> str:
    return f"scrypt${n}${r}${p}${SALT}${'11' * 32}"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "line 1 column 2"),
        ('{"keys": [\n  {"id": "x",}\n]}', "line 2 column"),
        ('{"keys": [{"id": "a", "id": "b", "tenant": "t"}]}', "duplicate field 'id'"),
        ([], 'expected an object {"keys": [...]}'),
        (_doc(version=1), "unknown field(s) 'version'"),
        ({"keys": {}}, "keys must be a list"),
        ({}, "missing field(s) keys"),
        ({"keys": ["x"]}, "keys[0]: expected an object"),
        (_doc(_e(), _e(id="b", salt="x")), "keys[1]: unknown field(s) 'salt'"),
        (_doc(_e(hash=None)), "keys[0]: missing field(s) hash"),
        (_doc(_e(id="a b")), "keys[0]: the id must"),
        (_doc(_e(id=7)), "keys[0]: the id must"),
        (_doc(_e(tenant="t/u")), "keys[0] (id 'a'): the tenant must"),
        (_doc(_e(roles="ops")), "roles must be a list"),
        (_doc(_e(roles=[1])), "role 1 must be"),
        (_doc(_e(roles=[f"r{i}" for i in range(33)])), "at most 32 roles"),
        (_doc(_e(hash=KEY_A)), "the hash must be sha256$"),
        (_doc(_e(hash=12)), "the hash must be a string"),
        (_doc(_e(hash="md5$00$11")), "the hash must be"),
        (_doc(_e(hash=SHA[:-2])), "the hash's digest must be 32 bytes"),
        (_doc(_e(hash=SHA.replace("00", "zz"))), "the hash's salt must be"),
        (_doc(_e(hash=f"sha256${'00' * 8}${'11' * 32}")), "salt must be 16-64 bytes"),
        (_doc(_e(hash=_scrypt_hash(1000))), "power of 2"),
        (_doc(_e(hash=_scrypt_hash(16, r=0))), "r in 1-64"),
        (_doc(_e(hash=_scrypt_hash(2**20, r=64))), "at most 256 MiB"),
        (_doc(_e(hash=_scrypt_hash("+16"))), "decimal integers"),
        (_doc(_e(), _e(hash=SHA.replace("11", "22"))), "keys[1] (id 'a'): the same id as keys[0]"),
        (
            _doc(_e(), _e(id="b", hash=SHA.upper().replace("SHA", "sha"))),
            "the same hash as keys[0]",
        ),
        (_doc(**{KEY_A: 1}), "unknown field(s) a 25-character name"),
    ],
)
def test_file_errors_say_what_and_where_but_not_the_hash(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(KeysError) as caught:
        KeyRing.from_settings(None, str(path))
    text = str(caught.value)
    assert message in text
    assert text.startswith(f"keys file {path}")
    for secret in (KEY_A, "00" * 16, "11" * 32, "11" * 31, "zz" * 16):
        assert secret not in text


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="cannot read it"):
        KeyRing.from_settings(None, str(tmp_path / "missing.json"))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"keys": ["\xff"]}')
    with pytest.raises(KeysError, match=r"not UTF-8 \(byte 11\)"):
        KeyRing.from_settings(None, str(binary))


# --- reloads ----------------------------------------------------------------------------------


def test_reload_picks_up_a_changed_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stepbus_gateway.auth")
    file = tmp_path / "keys.json"
    ring = KeyRing.from_settings(None, _write(file, [_entry(KEY_A, "a")]), reload_seconds=0)
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert not ring.reload_if_changed()  # unchanged
    _write(file, [_entry(KEY_C, "c", tenant="globex")], bump=1)
    assert ring.reload_if_changed()
    assert ring.authenticate(_bearer(KEY_A)) is None
    assert ring.authenticate(_bearer(KEY_C)) == Principal("globex", frozenset(), "c")
    assert not ring.reload_if_changed()
    assert f"api keys: 1 keys for 1 tenants (file {file} reloaded)" in caplog.messages


def test_an_invalid_rewrite_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "keys.json"
    ring = KeyRing.from_settings(None, _write(file, [_entry(KEY_A, "a")]), reload_seconds=0)
    bad_hash = hash_key(KEY_C)
    file.write_text(json.dumps({"keys": [{"id": "c", "tenant": "bad tenant", "hash": bad_hash}]}))
    os.utime(file, ns=(0, file.stat().st_mtime_ns + 10**9))
    with caplog.at_level(logging.ERROR, logger="stepbus_gateway.auth"):
        assert not ring.reload_if_changed()
        assert not ring.reload_if_changed()  # logged once per change, not once per check
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "keys[0] (id 'c'): the tenant must" in errors[0].getMessage()
    assert "keeping the 1 keys loaded before" in errors[0].getMessage()
    assert bad_hash.split("$")[2] not in caplog.text
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.authenticate(_bearer(KEY_C)) is None

    file.unlink()  # e.g. the secret is unmounted
    assert not ring.reload_if_changed()
    assert ring.authenticate(_bearer(KEY_A)) is not None
    _write(file, [_entry(KEY_C, "c")])
    assert ring.reload_if_changed()  # fixed: loaded
    assert ring.authenticate(_bearer(KEY_C)) is not None


def test_the_file_is_looked_at_at_most_every_reload_seconds(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    clock = FakeClock()
    ring = KeyRing.from_settings(
        None, _write(file, [_entry(KEY_A, "a")]), reload_seconds=5, clock=clock
    )
    _write(file, [_entry(KEY_C, "c")], bump=1)
    clock.now += 4.9
    assert not ring.reload_if_changed()
    assert ring.authenticate(_bearer(KEY_A)) is not None
    clock.now += 0.1
    assert ring.reload_if_changed()
    _write(file, [_entry(KEY_B, "b")], bump=2)
    clock.now += 1
    assert not ring.reload_if_changed()
    clock.now += 4
    assert ring.reload_if_changed()
    assert ring.authenticate(_bearer(KEY_B)) is not None


def test_a_new_inode_of_the_same_size_and_mtime_is_seen(tmp_path: Path) -> None:
    """Kubernetes swaps a mounted secret by renaming: the inode changes."""
    file = tmp_path / "keys.json"
    ring = KeyRing.from_settings(None, _write(file, [_entry(KEY_A, "a")]), reload_seconds=0)
    stat = file.stat()
    new = tmp_path / "keys.json.new"
    _write(new, [_entry(KEY_C, "a")])
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert new.stat().st_size == stat.st_size
    os.replace(new, file)
    assert ring.reload_if_changed()
    assert ring.authenticate(_bearer(KEY_C)) is not None


# --- caches -----------------------------------------------------------------------------------


def _cheap_scrypt(key: str) -> str:
    """An scrypt hash with the least parameters the file admits, so floods stay fast."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${salt.hex()}${digest.hex()}"


def test_verdicts_are_cached_and_bad_keys_cannot_evict_good_ones(
    tmp_path: Path, scrypt_calls: list[int]
) -> None:
    entry = {"id": "a", "tenant": "acme", "hash": _cheap_scrypt(KEY_A)}
    ring = KeyRing.from_settings(None, _write(tmp_path / "keys.json", [entry]))
    scrypt_calls.clear()
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.authenticate(_bearer(KEY_B)) is None
    assert len(scrypt_calls) == 2
    for _ in range(3):
        assert ring.authenticate(_bearer(KEY_A)) is not None
        assert ring.authenticate(_bearer(KEY_B)) is None
    assert len(scrypt_calls) == 2  # a repeated key, good or bad, costs no hash

    for i in range(CACHE_MAX + 100):
        assert ring.authenticate(_bearer(f"flood-key-{i:08d}")) is None
    assert len(scrypt_calls) == 2 + CACHE_MAX + 100  # one hash per distinct bad key
    assert ring.cache_size == CACHE_MAX + 1  # the unknown keys' cache is full; KEY_A is kept
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.authenticate(_bearer(f"flood-key-{CACHE_MAX + 99:08d}")) is None
    assert len(scrypt_calls) == 2 + CACHE_MAX + 100
    assert ring.authenticate(_bearer(KEY_B)) is None  # evicted (least recently used)
    assert len(scrypt_calls) == 3 + CACHE_MAX + 100


def test_sha256_entries_are_tried_before_scrypt_ones(
    tmp_path: Path, scrypt_calls: list[int]
) -> None:
    slow = {"id": "slow", "tenant": "acme", "hash": _cheap_scrypt(KEY_B)}
    ring = KeyRing.from_settings(None, _write(tmp_path / "keys.json", [slow, _entry(KEY_A, "a")]))
    scrypt_calls.clear()
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert scrypt_calls == []


def test_the_unknown_keys_cache_is_bounded_lru(tmp_path: Path) -> None:
    ring = KeyRing.from_settings(None, _write(tmp_path / "keys.json", [_entry(KEY_A, "a")]))
    for i in range(CACHE_MAX + 500):
        assert ring.authenticate(_bearer(f"unknown-key-{i:08d}")) is None
    assert ring.cache_size == CACHE_MAX
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.cache_size == CACHE_MAX + 1


def test_a_reload_clears_the_caches(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    scrypt_entry = {"id": "s", "tenant": "acme", "hash": hash_key(KEY_B, scrypt=True)}
    ring = KeyRing.from_settings(None, _write(file, [scrypt_entry]), reload_seconds=0)
    assert ring.authenticate(_bearer(KEY_B)) is not None
    assert ring.authenticate(_bearer(KEY_C)) is None
    assert ring.cache_size == 2
    scrypt_entry_c = {"id": "s", "tenant": "acme", "hash": hash_key(KEY_C, scrypt=True)}
    _write(file, [scrypt_entry_c], bump=1)
    assert ring.reload_if_changed()
    assert ring.cache_size == 0
    # A cached verdict would be wrong now: the old key is gone, the refused one is known.
    assert ring.authenticate(_bearer(KEY_B)) is None
    assert ring.authenticate(_bearer(KEY_C)) is not None


def test_env_only_keys_do_not_fill_the_cache() -> None:
    ring = KeyRing.from_settings(f"{KEY_A}:acme", None)
    assert ring.authenticate(_bearer(KEY_A)) is not None
    assert ring.authenticate(_bearer(KEY_B)) is None
    assert ring.cache_size == 0


# --- logs -------------------------------------------------------------------------------------


def test_startup_logs_counts_and_never_keys_or_hashes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stepbus_gateway.auth")
    entry = _entry(KEY_C, "c", tenant="globex")
    path = _write(tmp_path / "keys.json", [entry])
    KeyRing.from_settings(f"{KEY_A}:acme,{KEY_B}:acme", path)
    assert (
        f"api keys: 3 keys for 2 tenants (2 from STEPBUS_API_KEYS, 1 from file {path})"
        in caplog.messages
    )
    for secret in (KEY_A, KEY_B, KEY_C, entry["hash"].split("$")[2]):
        assert secret not in caplog.text
    caplog.clear()
    KeyRing.from_settings(None, None)
    assert caplog.records[0].levelno == logging.WARNING
    assert "open development mode" in caplog.text


# --- CLI --------------------------------------------------------------------------------------


def _ring_of(entry: dict[str, Any], tmp_path: Path) -> KeyRing:
    return KeyRing.from_settings(None, _write(tmp_path / "keys.json", [entry]))


@pytest.mark.parametrize("slow", [False, True])
def test_cli_new_prints_a_key_and_an_entry_that_admits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow: bool
) -> None:
    argv = ["new", "--tenant", "acme", "--roles", "ops+admin", "--id", "ci-bot"]
    assert keys.main(argv + (["--scrypt"] if slow else [])) == 0
    out, err = capsys.readouterr()
    assert err == ""
    key_line, entry_line = out.splitlines()
    key = key_line.removeprefix("key: ")
    assert key_line.startswith("key: ") and len(key) == 43
    entry = json.loads(entry_line)
    assert entry["hash"].startswith("scrypt$" if slow else "sha256$")
    assert key not in entry_line
    principal = _ring_of(entry, tmp_path).authenticate(_bearer(key))
    assert principal == Principal("acme", frozenset({"ops", "admin"}), "ci-bot")


def test_cli_new_keys_are_fresh_and_named_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    keys.main(["new", "--tenant", "acme"])
    keys.main(["new", "--tenant", "acme"])
    lines = capsys.readouterr().out.splitlines()
    first, second = lines[0].removeprefix("key: "), lines[2].removeprefix("key: ")
    assert first != second
    assert json.loads(lines[1])["id"] == _id(first)
    assert json.loads(lines[1])["roles"] == []


def test_cli_hash_reads_the_key_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY_B + "\n"))
    assert keys.main(["hash", "--tenant", "globex", "--roles", "ops"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 1 and KEY_B not in out
    entry = json.loads(out)
    assert _ring_of(entry, tmp_path).authenticate(_bearer(KEY_B)) == Principal(
        "globex", frozenset({"ops"}), _id(KEY_B)
    )


@pytest.mark.parametrize(
    ("stdin", "argv", "message"),
    [
        ("short-key\n", ["hash", "--tenant", "acme"], "at least 16 characters"),
        ("", ["hash", "--tenant", "acme"], "no key on stdin"),
        (KEY_A, ["hash", "--tenant", "a/b"], "the tenant must"),
        (KEY_A, ["hash", "--tenant", "acme", "--roles", "ops+"], "role 2 must"),
        (KEY_A, ["hash", "--tenant", "acme", "--id", "has space"], "the id must"),
        ("", ["new", "--tenant", "a b"], "the tenant must"),
    ],
)
def test_cli_errors_exit_2_without_the_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stdin: str,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as caught:
        keys.main(argv)
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    if stdin:
        assert stdin.strip() not in err
