import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum.errors import InvalidNameError
from stratum.security import (
    generate_key,
    hash_key,
    validate_artifact_path,
    validate_name,
    verify_key,
)
from stratum.security.keys import key_id_of


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "/abs", "..", "a..b", " x", "x" * 200])
def test_invalid_names_rejected(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(bad)


@pytest.mark.parametrize(
    "bad", ["../x", "/abs/x", "a//b", "a/./b", "a/../b", "a\\b", "", "a/b/", "x/.."]
)
def test_traversal_paths_rejected(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_artifact_path(bad)


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "c.d", "/"]), min_size=1, max_size=5))
def test_no_accepted_path_escapes_root(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        validate_artifact_path(path)
    except InvalidNameError:
        return
    assert ".." not in path.split("/") and not path.startswith("/")


def test_keys_are_stored_hashed_and_verified() -> None:
    key, key_id = generate_key()
    stored = hash_key(key)
    assert key not in stored and key_id_of(key) == key_id
    assert verify_key(key, stored)
    assert not verify_key(key + "x", stored)
    assert hash_key(key) != stored  # salted
