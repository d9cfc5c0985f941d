import random

import numpy as np
import pytest
import torch

from gptlab.utils import atomic_write, cache_dir, get_device, seed_everything


def test_seed_everything_makes_all_three_generators_repeat():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[0] == second[0] and first[1] == second[1]
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
    seed_everything(124)
    assert random.random() != first[0]


@pytest.mark.parametrize("bad", [1.5, "0", None, True])
def test_seed_everything_rejects_non_int(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(bad)


def test_seed_everything_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_everything(-1)


def test_get_device_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("GPTLAB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    dev = get_device()
    if expected:
        assert dev.type == expected
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("GPTLAB_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_errors_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")
        monkeypatch.setenv("GPTLAB_DEVICE", "cuda:0")
        with pytest.raises(ValueError, match="unset GPTLAB_DEVICE"):
            get_device()


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError, match="supports modes"), atomic_write(tmp_path / "x", "r"):
        pass


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir().is_dir()


def test_public_api_names_resolve():
    import gptlab

    assert gptlab.seed_everything is seed_everything
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gptlab.nope  # noqa: B018


def test_sha256_file_equals_hashlib_across_chunk_boundaries(tmp_path):
    import hashlib

    from gptlab.reference import sha256_file as reexported
    from gptlab.utils import sha256_file

    data = bytes(range(256)) * 8193  # a little over 2 MiB: three 1 MiB reads
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest() == reexported(str(path))
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from gptlab.utils import atomic_write

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.json", "w") as f:
            f.write("{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644  # not mkstemp's 0o600
        old = tmp_path / "old.txt"
        old.write_text("a")
        old.chmod(0o640)
        with atomic_write(old, "w") as f:
            f.write("b")
        assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text() == "b"
    finally:
        os.umask(umask)


def test_provenance_names_the_date_and_versions():
    import datetime
    import platform

    import torch

    import gptlab
    from gptlab.utils import provenance

    info = provenance()
    assert list(info) == ["created", "gptlab_version", "torch_version", "python_version"]
    assert info["created"] == datetime.date.today().isoformat()
    assert info["gptlab_version"] == gptlab.__version__
    assert info["torch_version"] == torch.__version__
    assert info["python_version"] == platform.python_version()
