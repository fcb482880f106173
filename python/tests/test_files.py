"""Bad files: missing, existing, not a store, truncated, not allowed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import shadowbucket as sb
from conftest import make_engine


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.sb"
    with pytest.raises(FileNotFoundError) as ei:
        sb.Engine.open(path)
    assert isinstance(ei.value, sb.NotFoundError)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.filename == str(path)
    with pytest.raises(sb.NotFoundError):
        sb.Engine.open(path, read_only=True)
    with pytest.raises(FileNotFoundError):
        sb.Engine.create(tmp_path / "no-dir" / "x.sb", capacity=4, pool_burst=10, pool_rate=1)


def test_create_over_an_existing_file_is_file_exists(store: Path) -> None:
    store.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        sb.Engine.create(store, capacity=4, pool_burst=10, pool_rate=1)
    assert store.read_bytes() == b"keep me"


@pytest.mark.parametrize("content", [b"", b"not a store at all" * 100, b"\0" * 8192])
def test_not_a_store_is_bad_file(store: Path, content: bytes) -> None:
    store.write_bytes(content)
    with pytest.raises(sb.BadFileError, match="not a valid shadowbucket store"):
        sb.Engine.open(store)
    assert store.read_bytes() == content  # left untouched


def test_truncated_store_is_bad_file(store: Path) -> None:
    make_engine(store).close()
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    with pytest.raises(sb.BadFileError):
        sb.Engine.open(store)


def test_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError) as ei:
        sb.Engine.open(tmp_path)
    assert isinstance(ei.value, sb.Error)


def test_not_allowed_is_permission_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "x.sb"
    else:
        # root passes permission bits; sysfs still refuses to create files
        target = Path("/sys/shadowbucket-test.sb")
    try:
        sb.Engine.create(target, capacity=4, pool_burst=10, pool_rate=1)
    except sb.AccessDeniedError as e:
        assert isinstance(e, PermissionError)
        assert e.filename == str(target)
    except sb.StorageError as e:
        pytest.skip(f"this system gives {e!r} here, not EACCES")
    else:
        pytest.fail("creating a store where one may not write succeeded")
