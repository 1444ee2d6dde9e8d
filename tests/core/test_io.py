"""Atomic writes: the finished file only, with the permissions a plain open would give."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workflow_helpers import REPO
from vislib.io import atomic_path, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_atomic_outputs_get_the_umask_permissions_not_mkstemps(tmp_path, umask, mode):
    out = tmp_path / "summary.md"
    code = (f"import os; os.umask({umask:#o}); from vislib.io import atomic_path, write_text; "
            f"write_text({str(out)!r}, 'table')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert out.read_text() == "table"
    assert out.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_failed_write_leaves_neither_target_nor_temp_file(tmp_path):
    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted), atomic_path(tmp_path / "table.md") as tmp:
        tmp.write_text("half a table")
        raise Interrupted
    assert list(tmp_path.iterdir()) == []
    write_text(tmp_path / "table.md", "whole table")
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]
