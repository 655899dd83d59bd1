"""The commit protocol (opt_jax.atomic): readers see the old or the whole new file or directory."""

import os

import pytest

from opt_jax import atomic


def test_write_file_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "sub" / "table.csv")
    atomic.write_text(path, "old\n")

    def half_then_crash(f):
        f.write("new, half")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        atomic.write_file(path, half_then_crash)
    assert open(path).read() == "old\n"
    atomic.write_json(path, {"a": 1})
    assert open(path).read() == '{\n  "a": 1\n}'
    atomic.write_file(path, lambda f: f.write(b"\x89PNG"), binary=True)
    assert open(path, "rb").read() == b"\x89PNG"


def test_replace_dir_keeps_the_old_directory_until_the_new_one_is_complete(tmp_path, monkeypatch):
    final, new = str(tmp_path / "tok"), str(tmp_path / "tok.tmp")
    os.makedirs(final)
    atomic.write_text(os.path.join(final, "vocab"), "old")
    os.makedirs(new)
    atomic.write_text(os.path.join(new, "vocab"), "new")
    real_replace = os.replace

    def crash_on_the_second_rename(src, dst):
        if src == new:
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_dir(new, final)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not os.path.exists(final) and open(final + ".old/vocab").read() == "old"  # nothing lost
    atomic.recover_dir(final)
    assert open(os.path.join(final, "vocab")).read() == "old"
    atomic.replace_dir(new, final)
    assert open(os.path.join(final, "vocab")).read() == "new" and not os.path.exists(final + ".old")
    atomic.remove(final)
    atomic.remove(final)  # nothing there: nothing to do
    assert not os.path.exists(final)
