import os

import pytest

from mailprov.errors import UsageError
from mailprov.users import AliasDB, Directory, UserDB


@pytest.fixture
def directory(tmp_path):
    users = UserDB(tmp_path / "users")
    aliases = AliasDB(tmp_path / "aliases")
    users.add("john@beta.test", "s3cret")
    users.add("alex@alpha.test", "pw")
    aliases.add("postmaster@beta.test", ["john@beta.test"])
    aliases.add("team@beta.test", ["john@beta.test", "alex@alpha.test", "ext@remote.test"])
    aliases.add("loop1@beta.test", ["loop2@beta.test"])
    aliases.add("loop2@beta.test", ["loop1@beta.test"])
    return Directory(users, aliases, ["beta.test", "alpha.test"])


def test_password_verification_and_hash_format(tmp_path, directory):
    assert directory.users.verify("John@Beta.test", "s3cret")
    assert not directory.users.verify("john@beta.test", "wrong")
    assert not directory.users.verify("nobody@beta.test", "s3cret")
    text = (tmp_path / "users").read_text()
    assert "$argon2id$" in text and "s3cret" not in text
    assert oct((tmp_path / "users").stat().st_mode & 0o777) == "0o640"


def test_resolution_aliases_subaddress_loops(directory):
    assert directory.resolve("john+lists@beta.test").mailboxes == ("john@beta.test",)
    r = directory.resolve("team@beta.test")
    assert r.mailboxes == ("john@beta.test", "alex@alpha.test") and r.remote == ("ext@remote.test",)
    assert not directory.resolve("nobody@beta.test").found
    assert not directory.resolve("loop1@beta.test").found  # a loop resolves to nothing, never forever
    assert directory.resolve("someone@remote.test").remote == ("someone@remote.test",)


def test_sender_ownership(directory):
    assert directory.may_send_as("john@beta.test", "john@beta.test")
    assert directory.may_send_as("john@beta.test", "John+x@beta.test")
    assert directory.may_send_as("john@beta.test", "postmaster@beta.test")
    assert directory.may_send_as("john@beta.test", "")
    assert not directory.may_send_as("john@beta.test", "alex@alpha.test")
    assert not directory.may_send_as("alex@alpha.test", "postmaster@beta.test")


def test_changes_are_seen_without_restart(tmp_path, directory):
    other = UserDB(tmp_path / "users")  # a second process's view
    assert not other.exists("new@beta.test")
    directory.users.add("new@beta.test", "x")
    assert other.exists("new@beta.test")
    directory.users.delete("new@beta.test")
    assert not other.exists("new@beta.test")


def test_bad_input_is_refused(directory):
    for bad in ("nodomain", "a b@beta.test", "x+y@beta.test", "a:b@beta.test"):
        with pytest.raises(UsageError):
            directory.users.add(bad, "pw")
    with pytest.raises(UsageError):
        directory.users.add("john@beta.test", "again")
    with pytest.raises(UsageError):
        directory.users.add("empty@beta.test", "")
    with pytest.raises(UsageError):
        directory.aliases.add("x@beta.test", ["not-an-address"])


def test_writes_leave_no_temp_files(tmp_path, directory):
    assert sorted(os.listdir(tmp_path)) == ["aliases", "users"]
