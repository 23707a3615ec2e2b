"""Faults of issue 17 around files: crafted and corrupted inputs, full disks, odd
outputs, odd environments. Every CLI case asserts the exit code, one stderr line naming
the culprit, no traceback, and what is on disk afterwards.

The promises these tests check are listed in docs/reliability.md.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import ncfkit.io as nio
from ncfkit.cli.main import cli
from ncfkit.errors import InputError, RunError

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 3))
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y = rng.standard_normal(6)
FAST = ["--hidden", "3", "--act", "square", "--restarts", "2", "--max-steps", "50"]


def run(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args])


def one_line(result, code: int, pattern: str) -> str:
    """The run ended with ``code`` and exactly one stderr line matching ``pattern``."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert isinstance(result.exception, SystemExit) or (code == 0 and result.exception is None), \
        repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line: {result.stderr!r}"
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A real kkt file and a real escape file (Example 1, diagonal model)."""
    root = tmp_path_factory.mktemp("results")
    np.savez(root / "data.npz", X=X, y=Y)
    np.savez(root / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    res = run("kkt", root / "data.npz", *FAST, "--out", root / "kkt.h5")
    assert res.exit_code == 0, res.output
    res = run("escape", root / "ex1.npz", "--arch", "diag", "--delta", "1e-3", "--lr", "1e-3",
              "--delta-ref", "none", "--out", root / "escape.h5")
    assert res.exit_code == 0, res.output
    return root


# --------------------------------------------------------------------------- 2: CSV


@pytest.mark.parametrize("content, n", [
    (b"\xef\xbb\xbf1,2,3\n4,5,6\n7,8,9\n", 3),  # a byte-order mark (Excel's "CSV UTF-8")
    (b"1,2,3\n4,5,6\n7,8,9\n", 3),
    (b"x1,x2,y\n1,2,3\n4,5,6\n", 2),  # a header
    (b"\xef\xbb\xbfx1,x2,y\n1,2,3\n4,5,6\n", 2),
    (b"1e0, 2 ,\"3\"\n4,5,6\n", 2),  # spaces and quotes around numbers
], ids=["bom", "plain", "header", "bom-header", "spaces-quotes"])
def test_csv_first_row_of_numbers_is_data(tmp_path, content, n):
    p = tmp_path / "b.csv"
    p.write_bytes(content)
    ds = nio.load_data(p)
    assert ds.n == n and ds.d == 2
    assert ds.X[-1].tolist() == [4.0, 5.0] or ds.X[-1].tolist() == [7.0, 8.0]


@pytest.mark.parametrize("first", ["NA,2,3", "nan,2,3", "1,N/A,3", "\ufeffNA,2,3"])
def test_csv_missing_values_in_the_first_row_are_data_and_refused(tmp_path, first):
    p = tmp_path / "na.csv"
    p.write_text(first + "\n4,5,6\n", encoding="utf-8")
    res = run("kkt", p, *FAST)
    one_line(res, 2, r"na\.csv: X contains NaN")


# --------------------------------------------------------------------------- 3: symlinked --out


def test_dangling_symlink_out_is_written_through(tmp_path):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    (tmp_path / "store").mkdir()
    link = tmp_path / "r.h5"
    link.symlink_to(tmp_path / "store" / "real.h5")  # dangling: the target does not exist yet
    res = run("kkt", tmp_path / "data.npz", *FAST, "--out", link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and (tmp_path / "store" / "real.h5").is_file()
    assert nio.read_h5(link, ("kkt",))["ncfkit_kind"] == "kkt"
    assert listing(tmp_path / "store") == ["real.h5"]  # no temporary file left


def test_symlink_to_an_existing_file_needs_force_and_keeps_the_link(tmp_path):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    target = tmp_path / "real.h5"
    target.write_bytes(b"old")
    link = tmp_path / "r.h5"
    link.symlink_to(target)
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", link), 2, r"r\.h5' exists; pass --force")
    assert target.read_bytes() == b"old"
    assert run("kkt", tmp_path / "data.npz", *FAST, "--out", link, "--force").exit_code == 0
    assert link.is_symlink() and nio.read_h5(target)["ncfkit_kind"] == "kkt"


def test_symlink_into_a_missing_folder_is_refused_before_any_work(tmp_path):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    link = tmp_path / "r.h5"
    link.symlink_to(tmp_path / "nowhere" / "real.h5")
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", link), 2,
             r"r\.h5' is a symbolic link into .*nowhere.*does not exist")


def test_symlink_loop_is_refused(tmp_path):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    (tmp_path / "a.h5").symlink_to(tmp_path / "b.h5")
    (tmp_path / "b.h5").symlink_to(tmp_path / "a.h5")
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", tmp_path / "a.h5"), 2, r"a\.h5.*loops")


def test_read_only_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """A folder the user may not write (as root every folder is writable, so the
    permission check is simulated)."""
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(nio.os, "access", lambda p, mode: False if Path(p).name == "ro" else real(p, mode))
    import ncfkit.api as api

    monkeypatch.setattr(api, "find_kkt_points", lambda *a, **k: pytest.fail("work started"))
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", tmp_path / "ro" / "r.h5"), 2,
             r"output '.*ro/r\.h5': folder '.*ro' is not writable")
    assert listing(tmp_path / "ro") == []


def test_output_that_appears_during_the_run_keeps_the_finished_run_beside_it(tmp_path, monkeypatch):
    """Another job writes the same --out meanwhile: not overwritten, and this run's
    result is kept as NAME.1.h5, named in the one line (exit 2)."""
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    out = tmp_path / "r.h5"
    real_write = nio._write_all

    def other_job_first(f, image):
        out.write_bytes(b"the other job's")
        real_write(f, image)

    monkeypatch.setattr(nio, "_write_all", other_job_first)
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", out), 2,
             r"r\.h5' appeared during the run; not overwritten; this run's result is kept in .*r\.1\.h5")
    assert out.read_bytes() == b"the other job's"
    assert nio.read_h5(tmp_path / "r.1.h5")["ncfkit_kind"] == "kkt"
    assert listing(tmp_path) == ["data.npz", "r.1.h5", "r.h5"]


# --------------------------------------------------------------------------- 4: full disk


def _enospc_after_half(monkeypatch):
    def half_then_full(f, image):
        f.write(image[: len(image) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nio, "_write_all", half_then_full)


@pytest.mark.parametrize("command", ["kkt", "escape", "teacher"])
def test_full_disk_mid_write_keeps_the_older_output(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # a rescue attempt (which fails too: every disk is full) lands here
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    np.savez(tmp_path / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    out = tmp_path / ("t.h5" if command == "teacher" else "r.h5")
    out.write_bytes(b"the older output")
    args = {
        "kkt": ["kkt", tmp_path / "data.npz", *FAST],
        "escape": ["escape", tmp_path / "ex1.npz", "--arch", "diag", "--delta", "1e-3", "--delta-ref", "none"],
        "teacher": ["data", "teacher", "--n", "10", "--d", "3", "-o"],
    }[command]
    _enospc_after_half(monkeypatch)
    flag = [] if command == "teacher" else ["--out"]
    res = run(*args, *flag, out, "--force")
    one_line(res, 1, rf"output '.*{out.name}': could not write it \(No space left on device\); nothing written; "
                     rf"the earlier {out.name} is left as it was")
    assert out.read_bytes() == b"the older output"
    assert listing(tmp_path) == sorted(["data.npz", "ex1.npz", out.name])  # no temporary file


def test_full_disk_rescues_the_finished_result_elsewhere(tmp_path, monkeypatch):
    """Only the output's file system is full: the older output stays, and the finished
    result is written to NCFKIT_RESCUE_DIR (else the current folder, else the temporary
    folder), named in the one line."""
    (tmp_path / "out").mkdir()
    (tmp_path / "rescue").mkdir()
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    out = tmp_path / "out" / "r.h5"
    out.write_bytes(b"the older output")
    real = nio._write_all

    def full_in_out(f, image):
        if Path(f.name).parent == out.parent:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, image)

    monkeypatch.setattr(nio, "_write_all", full_in_out)
    res = run("kkt", tmp_path / "data.npz", *FAST, "--out", out, "--force",
              env={"NCFKIT_RESCUE_DIR": str(tmp_path / "rescue")})
    line = one_line(res, 1, r"r\.h5': could not write it \(No space left on device\); nothing written; the earlier "
                            r"r\.h5 is left as it was; the finished result is kept in '.*rescue/r\.rescued-.*\.h5'$")
    kept = Path(re.search(r"kept in '(.*)'$", line).group(1))
    assert nio.read_h5(kept, ("kkt",))["points"]
    assert out.read_bytes() == b"the older output" and listing(tmp_path / "out") == ["r.h5"]


def test_output_folder_removed_during_the_run_rescues_the_result(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)  # no NCFKIT_RESCUE_DIR: the current folder
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    real = nio._h5_image

    def then_remove(fill):
        image = real(fill)
        shutil.rmtree(tmp_path / "out")  # a clean-up job, meanwhile
        return image

    monkeypatch.setattr(nio, "_h5_image", then_remove)
    line = one_line(run("kkt", "data.npz", *FAST, "--out", "out/r.h5"), 2,
                    r"folder 'out' does not exist; the finished result is kept in '.*r\.rescued-.*\.h5'$")
    kept = Path(re.search(r"kept in '(.*)'$", line).group(1))
    assert kept.parent == tmp_path and nio.read_h5(kept, ("kkt",))["ncfkit_kind"] == "kkt"


def test_output_created_before_the_final_write_keeps_the_result_beside_it(tmp_path, monkeypatch):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    out = tmp_path / "r.h5"
    real = nio._h5_image

    def other_job(fill):
        image = real(fill)
        out.write_bytes(b"the other job's")
        return image

    monkeypatch.setattr(nio, "_h5_image", other_job)
    one_line(run("kkt", tmp_path / "data.npz", *FAST, "--out", out), 2,
             r"r\.h5' appeared during the run; not overwritten; this run's result is kept in .*r\.1\.h5")
    assert out.read_bytes() == b"the other job's" and nio.read_h5(tmp_path / "r.1.h5")["ncfkit_kind"] == "kkt"


def test_hdf5_library_never_writes_to_the_disk_itself(tmp_path, monkeypatch):
    """The image is built in memory; only _write_all touches the output's file system
    (h5py writing straight to a full disk crashed the interpreter)."""
    seen = []
    real = nio._write_all
    monkeypatch.setattr(nio, "_write_all", lambda f, image: (seen.append(len(image)), real(f, image)))
    nio.write_h5(tmp_path / "r.h5", "kkt", {"a": np.arange(10.0)})
    assert seen and seen[0] == (tmp_path / "r.h5").stat().st_size


def _can_mount_tmpfs(where: Path) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    if not ok:
        where.rmdir()
    return ok


@pytest.mark.slow
def test_full_tmpfs_real_process(tmp_path):
    """A real 2 MB tmpfs filled to a few KB free: exit 1, one line, no temporary file, the
    older output intact, no crash (was a segfault with up to 84 h5py tracebacks)."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root and mount -t tmpfs")
    try:
        np.savez(tmp_path / "data.npz", X=X, y=Y)
        out = disk / "r.h5"
        out.write_bytes(b"the older output")
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 8192)  # 8 KB free
        proc = subprocess.run([sys.executable, "-m", "ncfkit", "kkt", str(tmp_path / "data.npz"),
                               "--hidden", "60", "--act", "square", "--restarts", "8", "--max-steps", "50",
                               "--out", str(out), "--force"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr
        assert re.search(r"r\.h5': could not write it \(No space left on device\); nothing written; the earlier "
                         r"r\.h5 is left as it was; the finished result is kept in '(.*)'$", lines[-1]), lines[-1]
        assert out.read_bytes() == b"the older output"
        assert listing(disk) == ["filler", "r.h5"]
        kept = Path(re.search(r"kept in '(.*)'$", lines[-1]).group(1))
        assert kept.parent == tmp_path and nio.read_h5(kept, ("kkt",))["points"]  # nothing lost
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --------------------------------------------------------------------------- 5: threads


@pytest.mark.parametrize("value, expected", [("100000", "high"), ("0", 1), ("-1", 1), ("abc", 1), ("2", 2)])
def test_absurd_thread_counts_are_clamped_and_said_once(monkeypatch, capsys, value, expected):
    from ncfkit import _runtime

    monkeypatch.setenv("NCFKIT_THREADS", value)
    monkeypatch.setattr(_runtime, "_warned", set())
    high = _runtime.MAX_THREADS_PER_CPU * _runtime._cpus()
    want = high if expected == "high" else min(expected, high)
    assert _runtime.row_workers() == want and _runtime.row_workers() == want
    err = capsys.readouterr().err.strip().splitlines()
    if value == "2" and high >= 2:
        assert err == []
    else:
        assert len(err) == 1 and f"NCFKIT_THREADS='{value}'" in err[0] and f"using {want} thread" in err[0]


@pytest.mark.parametrize("value, expected", [("8G", 8 << 30), ("512m", 512 << 20), ("1.5GiB", 3 << 29),
                                             ("1000", 1000), ("lots", None), ("-1G", None)])
def test_memory_limit_setting(monkeypatch, capsys, value, expected):
    from ncfkit import _runtime

    monkeypatch.setenv("NCFKIT_MAX_MEMORY", value)
    monkeypatch.setattr(_runtime, "_warned", set())
    got = [_runtime.available_memory(), _runtime.available_memory()]
    err = capsys.readouterr().err.strip().splitlines()
    if expected is None:
        assert got[0] > 0 and len(err) == 1 and f"NCFKIT_MAX_MEMORY='{value}' is not a size" in err[0]
    else:
        assert got == [expected, expected] and err == []


@pytest.mark.slow
def test_huge_thread_count_runs(tmp_path):
    """In a real process: NCFKIT_THREADS=100000 ran out of threads, then segfaulted."""
    np.savez(tmp_path / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    env = dict(os.environ, NCFKIT_THREADS="100000")
    proc = subprocess.run([sys.executable, "-m", "ncfkit", "escape", "ex1.npz", "--arch", "diag", "--delta", "1e-3",
                           "--delta", "1e-2", "--delta", "1e-4", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("NCFKIT_THREADS='100000' is above") == 1


# --------------------------------------------------------------------------- 6: declared sizes


def _npz_member(zf: zipfile.ZipFile, name: str, shape, body: bytes, dtype="<f8") -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    zf.writestr(name + ".npy", buf.getvalue() + body)


def _bomb(p: Path) -> None:
    """A deflated 1M x 5 array of zeros (40 MB, a 40 KB file)."""
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as f:
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                                       "shape": (1_000_000, 5)})
            f.write(buf.getvalue())
            zero = bytes(1 << 20)
            for _ in range(40_000_000 // len(zero)):
                f.write(zero)
            f.write(bytes(40_000_000 % len(zero)))
        _npz_member(zf, "y", (1_000_000,), bytes(8_000_000))
    assert p.stat().st_size < 200_000


def test_npz_zip_bomb_refused_from_its_headers(tmp_path):
    """The bomb against a 16 MB limit: the member headers are read, nothing inflated."""
    p = tmp_path / "bomb.npz"
    _bomb(p)
    res = run("kkt", p, *FAST, env={"NCFKIT_MAX_MEMORY": "16M"})
    one_line(res, 2, r"bomb\.npz: declares X of shape \(1000000, 5\) \(48 MB as float64\), more than this machine "
                     r"can work with \(16\.8 MB of memory available; NCFKIT_MAX_MEMORY")


def test_npz_zip_bomb_refused_by_its_inflation_ratio(tmp_path, monkeypatch):
    """Whatever the memory: a member that inflates 1000-fold is no measured data (the
    issue's 3.4 MB file inflated to 3.2 GB; here the size floor is lowered to 1 MB)."""
    p = tmp_path / "bomb.npz"
    _bomb(p)
    monkeypatch.setattr(nio, "ZIP_BOMB_MIN_BYTES", 1 << 20)
    one_line(run("kkt", p, *FAST), 2, r"bomb\.npz: X inflates \d+-fold, from .* to 40 MB \(shape \(1000000, 5\)\): "
                                      r"a zip bomb, not data; not read")


def test_npz_header_larger_than_its_data_refused(tmp_path):
    p = tmp_path / "lying.npz"
    with zipfile.ZipFile(p, "w") as zf:
        _npz_member(zf, "X", (40_000_000, 10), bytes(64))
        _npz_member(zf, "y", (40_000_000,), bytes(64))
    one_line(run("kkt", p, *FAST), 2, r"lying\.npz: X declares shape \(40000000, 10\) .* holds only 64 bytes")


@pytest.mark.parametrize("how", ["lying", "huge"])
def test_crafted_weight_file_refused_unread(tmp_path, how):
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    p = tmp_path / "w0.npz"
    with zipfile.ZipFile(p, "w") as zf:
        if how == "lying":
            _npz_member(zf, "W1", (40_000_000, 3), bytes(64))
        else:
            _npz_member(zf, "W1", (300_000, 3), bytes(8 * 900_000))
        _npz_member(zf, "W2", (3,), bytes(24))
    res = run("escape", tmp_path / "data.npz", *FAST, "--init", p, "--delta", "1e-3", "--max-time", "0.01",
              "--delta-ref", "none", env={"NCFKIT_MAX_MEMORY": "16M"})
    one_line(res, 2, r"w0\.npz: W1 declares shape \(40000000, 3\) .*holds only 64 bytes" if how == "lying"
             else r"w0\.npz: declares arrays of 7\.2 MB as float64, more than this machine can work with")


def test_npz_shapes_that_disagree_refused_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "mismatch.npz"
    np.savez(p, X=X, y=Y[:-1])
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("the arrays were read"))
    with pytest.raises(InputError, match=r"mismatch\.npz: X has 6 rows but y has 5 labels"):
        nio.load_data(p)


def test_h5_declaring_gigabytes_refused(tmp_path):
    """A few-KB .h5 whose X and y declare 2 GB that were never written."""
    p = tmp_path / "sparse.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("X", shape=(25_000_000, 10), dtype="f8")
        f.create_dataset("y", shape=(25_000_000,), dtype="f8")
    assert p.stat().st_size < 10_000
    one_line(run("kkt", p, *FAST), 2, r"sparse\.h5: X declares shape \(25000000, 10\) .* stores only 0 bytes")


def test_h5_larger_than_memory_refused(tmp_path):
    p = tmp_path / "big.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("X", data=np.zeros((200_000, 10)), compression="gzip")
        f.create_dataset("y", data=np.zeros(200_000), compression="gzip")
    res = run("kkt", p, *FAST, env={"NCFKIT_MAX_MEMORY": "8M"})
    one_line(res, 2, r"big\.h5: declares X of shape \(200000, 10\) .*more than this machine can work with")


def test_h5_shapes_that_disagree_refused_before_reading(tmp_path):
    p = tmp_path / "mismatch.h5"
    with h5py.File(p, "w") as f:
        f["X"], f["y"] = X, np.zeros(7)
    one_line(run("kkt", p, *FAST), 2, r"mismatch\.h5: X has 6 rows but y has 7 labels")


def _forge_big_result(p: Path, kind: str = "escape", written: bool = False) -> None:
    with h5py.File(p, "w") as f:
        f.attrs["ncfkit_kind"] = kind
        f.attrs["status"] = "complete"
        g = f.create_group("runs").create_group("0")
        g.attrs["delta"] = 1e-3
        rec = g.create_group("records")
        if written:
            rec.create_dataset("loss", data=np.zeros(3_000_000), compression="gzip")
        else:
            rec.create_dataset("loss", shape=(300_000_000,), dtype="f8")  # 2.4 GB, never written


@pytest.mark.parametrize("command", ["info", "collect", "plot"])
def test_result_file_declaring_gigabytes_refused_by_every_reader(tmp_path, command):
    p = tmp_path / "crafted.h5"
    _forge_big_result(p)
    args = [command, p] + (["-o", tmp_path / "fig.png"] if command == "plot" else [])
    one_line(run(*args), 2, r"crafted\.h5: dataset /runs/0/records/loss declares shape \(300000000,\) .*stores only")
    assert listing(tmp_path) == ["crafted.h5"]


def test_result_file_larger_than_memory_refused_by_a_full_read(tmp_path, monkeypatch):
    p = tmp_path / "big.h5"
    _forge_big_result(p, written=True)
    monkeypatch.setenv("NCFKIT_MAX_MEMORY", "8M")
    with pytest.raises(InputError, match=r"big\.h5: dataset /runs/0/records/loss of shape \(3000000,\) would exceed"):
        nio.read_h5(p)
    assert nio.read_h5(p, max_array=64)["runs"]["0"]["records"]["loss"].shape == (3_000_000,)  # info: not read


@pytest.mark.parametrize("command", ["info", "collect", "plot"])
def test_result_record_columns_that_disagree_refused(results, tmp_path, command):
    """Datasets of one result checked against each other: every column of a run's
    records has one row per record (a crafted file with 3 losses for 1,000 times)."""
    p = tmp_path / "ragged.h5"
    shutil.copy(results / "escape.h5", p)
    with h5py.File(p, "r+") as f:
        rec = f["runs/0/records"]
        loss = rec["loss"][()]
        del rec["loss"]
        rec["loss"] = loss[:3]
    args = [command, p] + (["-o", tmp_path / "fig.png"] if command == "plot" else [])
    one_line(run(*args), 2, r"ragged\.h5: /runs/0/records: the record columns disagree in length \(.*loss 3, ")
    assert listing(tmp_path) == ["ragged.h5"]


# --------------------------------------------------------------------------- 11: checksums


def test_every_dataset_is_checksummed(results):
    with h5py.File(results / "kkt.h5") as f:
        seen = []
        f.visititems(lambda name, obj: seen.append((name, obj.fletcher32))
                     if isinstance(obj, h5py.Dataset) and obj.ndim and obj.size else None)
        assert f.id.get_create_plist().get_version()[0] >= 2  # superblock with a checksum
    assert seen and all(ok for _, ok in seen), seen


def _flip_in_chunk(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    mid = info.byte_offset + info.size // 2
    data[mid] ^= 0xFF
    path.write_bytes(bytes(data))


READERS = {
    "info": lambda p, t: ["info", p],
    "info-json": lambda p, t: ["info", p, "--json"],
    "collect": lambda p, t: ["collect", p],
    "plot": lambda p, t: ["plot", p, "-o", t / "fig.png"],
}


@pytest.mark.parametrize("reader", list(READERS))
def test_flipped_bytes_in_escape_records_refused(results, tmp_path, reader):
    p = tmp_path / "flipped.h5"
    shutil.copy(results / "escape.h5", p)
    _flip_in_chunk(p, "runs/0/records/loss")
    one_line(run(*READERS[reader](p, tmp_path)), 2,
             r"flipped\.h5: not a readable HDF5 file: truncated or corrupted \(a checksum does not match\)")
    assert listing(tmp_path) == ["flipped.h5"]


@pytest.mark.parametrize("args", [
    lambda p, t: ["info", p],
    lambda p, t: ["sparsity", p],
    lambda p, t: ["plot", p, "-o", t / "fig.png"],
    lambda p, t: ["escape", t / "data.npz", *FAST, "--kkt", p, "--init", "kkt", "--delta", "1e-3",
                  "--max-time", "0.01", "--delta-ref", "none"],
], ids=["info", "sparsity", "plot", "escape-kkt"])
def test_flipped_bytes_in_kkt_weights_refused(results, tmp_path, args):
    p = tmp_path / "flipped.h5"
    shutil.copy(results / "kkt.h5", p)
    shutil.copy(results / "data.npz", tmp_path / "data.npz")
    _flip_in_chunk(p, "points/0/w")
    one_line(run(*args(p, tmp_path)), 2, r"flipped\.h5: .*truncated or corrupted")
    assert listing(tmp_path) == ["data.npz", "flipped.h5"]


def _data_bytes(path: Path) -> list[int]:
    """File offsets of every stored byte of every dataset's data (not the metadata)."""
    spans = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.size == 0:
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            if offset is not None:
                spans.append((offset, obj.id.get_storage_size()))
        else:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                spans.append((info.byte_offset, info.size))

    with h5py.File(path) as f:
        f.visititems(visit)
    return [o + k for o, n in spans for k in range(n)]


def test_two_thousand_flipped_bytes_never_complete(results, tmp_path):
    """The issue's case: 2,000 flipped bytes, all in the datasets' stored data (where
    nothing but a checksum can notice: the metadata still parses)."""
    p = tmp_path / "noisy.h5"
    data = bytearray((results / "escape.h5").read_bytes())
    offsets = _data_bytes(results / "escape.h5")
    for i in np.random.default_rng(3).choice(offsets, size=min(2000, len(offsets)), replace=False):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    for command in ("info", "collect"):
        res = run(command, p)
        one_line(res, 2, r"noisy\.h5: not a readable HDF5 file: truncated or corrupted \(a checksum does not match\)")
        assert "complete" not in res.stdout


def test_old_files_without_checksums_still_read(results, tmp_path):
    """A result file written before checksums (plain h5py, contiguous datasets)."""
    old = tmp_path / "old.h5"
    with h5py.File(results / "kkt.h5") as src, h5py.File(old, "w", libver="earliest") as dst:
        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                g = dst.require_group(name)
                g.attrs.update(obj.attrs)
            else:
                dst.create_dataset(name, data=obj[()])
        dst.attrs.update(src.attrs)
        src.visititems(copy)
    res = run("info", old, "--json")
    assert res.exit_code == 0, res.output
    assert '"status": "complete"' in res.stdout
    assert run("sparsity", old).exit_code == 0


# --------------------------------------------------------------------------- 12: damaged kkt files


def _edit_kkt(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_kkt_file_with_nan_weights_named(results, tmp_path):
    def nan_w(f):
        w = f["points/0/w"][()]
        w[0] = np.nan
        del f["points/0/w"]
        f["points/0/w"] = w

    p = _edit_kkt(results / "kkt.h5", tmp_path / "nanw.h5", nan_w)
    shutil.copy(results / "data.npz", tmp_path / "data.npz")
    for args in (["sparsity", p], ["escape", tmp_path / "data.npz", *FAST, "--kkt", p, "--init", "kkt",
                                   "--delta", "1e-3", "--max-time", "0.01", "--delta-ref", "none"]):
        one_line(run(*args), 2, r"nanw\.h5: point 0: w holds NaN or Inf weights")


@pytest.mark.parametrize("spec", ['{"arch": "mlp", "d": "three"}', "not json", '{"arch": "transformer"}'])
def test_kkt_file_with_malformed_architecture_named(results, tmp_path, spec):
    def bad_arch(f):
        f["provenance"].attrs["architecture"] = spec

    p = _edit_kkt(results / "kkt.h5", tmp_path / "badarch.h5", bad_arch)
    one_line(run("sparsity", p), 2, r"badarch\.h5: malformed architecture record")
    one_line(run("plot", p, "-o", tmp_path / "f.png"), 2, r"badarch\.h5")


# --------------------------------------------------------------------------- 13: external links


def test_provenance_hashes_the_targets_of_external_links(tmp_path):
    (tmp_path / "parts").mkdir()
    with h5py.File(tmp_path / "parts" / "x.h5", "w") as f:
        f["X"] = X
    with h5py.File(tmp_path / "parts" / "y.h5", "w") as f:
        f["y"] = Y
    link = tmp_path / "linked.h5"
    with h5py.File(link, "w") as f:
        f["X"] = h5py.ExternalLink("parts/x.h5", "/X")
        f["y"] = h5py.ExternalLink("parts/y.h5", "/y")
    before = nio.load_data(link)
    assert before.n == 6 and before.sha256 != digest(link)  # not just the link file
    assert nio.sha256_of(link) == before.sha256
    with h5py.File(tmp_path / "parts" / "y.h5", "r+") as f:
        f["y"][0] += 1.0
    assert nio.load_data(link).sha256 != before.sha256  # a changed target changes the hash
    np.savez(tmp_path / "plain.npz", X=X, y=Y)
    assert nio.sha256_of(tmp_path / "plain.npz") == digest(tmp_path / "plain.npz")  # sha256sum's


def test_dangling_external_link_named(tmp_path):
    link = tmp_path / "linked.h5"
    with h5py.File(link, "w") as f:
        f["X"] = h5py.ExternalLink("parts/x.h5", "/X")
        f["y"] = Y
    one_line(run("kkt", link, *FAST), 2, r"linked\.h5: X is an external link to parts/x\.h5:/X, which cannot be opened")


# --------------------------------------------------------------------------- 9: out-of-memory advice


def test_out_of_memory_advice_names_the_data_file(tmp_path, monkeypatch):
    import click

    from ncfkit.cli.options import guarded

    p = tmp_path / "huge.npz"
    np.savez(p, X=np.zeros((20_000, 50)), y=np.zeros(20_000))  # 8 MB as float64

    @click.command()
    @click.argument("data")
    @click.option("--restarts", default=1)
    @guarded
    def command(data, restarts):
        raise MemoryError()

    monkeypatch.setenv("NCFKIT_MAX_MEMORY", "16M")
    res = CliRunner().invoke(command, [str(p)])
    one_line(res, 1, r"out of memory: the data file .*huge\.npz \(8\.16 MB as float64\) does not fit")
    monkeypatch.setenv("NCFKIT_MAX_MEMORY", "64G")
    res = CliRunner().invoke(command, [str(p)])
    one_line(res, 1, r"out of memory; try a smaller problem \(fewer --restarts")


def test_write_errors_other_than_a_full_disk_are_run_errors_naming_the_output(tmp_path, monkeypatch):
    def fails(f, image):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(nio, "_write_all", fails)
    monkeypatch.chdir(tmp_path)  # where a rescue would go (it fails as well: no file is left)
    monkeypatch.setenv("NCFKIT_RESCUE_DIR", str(tmp_path))
    with pytest.raises(RunError, match=r"r\.h5': could not write it \(Input/output error\); nothing written$"):
        nio.write_h5(tmp_path / "r.h5", "kkt", {})
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- 7: progress off a terminal


def test_line_progress_writes_a_line_every_interval():
    from ncfkit._progress import LineProgress

    now = [0.0]
    out = io.StringIO()
    with LineProgress("escape", total=10, unit="t", interval=5, stream=out, clock=lambda: now[0]) as bar:
        for i in range(1, 13):
            now[0] = 1.5 * i
            bar.update(0.8 * i, "near origin")
    lines = out.getvalue().splitlines()
    assert lines[0] == "escape: t = 3.2 / 10 (32%), near origin, 6 s (0.533 t/s)"  # with the rate
    assert len(lines) == 4 and lines[-1].startswith("escape: t = 9.6 / 10 (96%)")  # + the last state
    quiet = io.StringIO()
    with LineProgress("escape", interval=5, stream=quiet, clock=lambda: 0.0) as bar:
        bar.update(1.0)
    assert quiet.getvalue() == ""  # a short run prints nothing


def test_progress_is_a_plain_line_off_a_terminal():
    from ncfkit._progress import LineProgress, make_progress

    assert isinstance(make_progress("x", stream=io.StringIO()), LineProgress)


def test_long_runs_report_progress_in_a_log(tmp_path):
    """stderr is not a terminal here (CliRunner): the training still says how far it
    got, one plain line per interval (NCFKIT_PROGRESS_SECONDS=0: every update)."""
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    res = run("escape", tmp_path / "data.npz", "--hidden", "3", "--act", "square", "--delta", "1e-3",
              "--max-time", "5", "--until", "max-time", "--delta-ref", "none",
              env={"NCFKIT_PROGRESS_SECONDS": "0"})
    assert res.exit_code == 0, res.output
    assert re.search(r"^escape: t = [0-9.e+-]+ / 5 \(\d+%\)", res.stderr, re.MULTILINE), res.stderr[:2000]
    assert "\x1b[" not in res.stderr  # no terminal control sequences in a log


def test_kkt_ascent_reports_progress_in_a_log(monkeypatch, capsys):
    """The KKT ascent's events, off a terminal: plain lines (not a spinner that a log
    never shows)."""
    from ncfkit.cli.options import stderr_console
    from ncfkit.cli.progress import ConsoleProgress

    monkeypatch.setenv("NCFKIT_PROGRESS_SECONDS", "0")
    console = stderr_console()
    assert not console.is_terminal
    with ConsoleProgress(console, restarts=64) as progress:
        progress("status", "ascent from 64 starts…")
        progress("ascent", (100, 64))
        progress("ascent", (200, 12))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "ascent from 64 starts…"  # the phase's name as it starts
    steps = lines[1:]
    assert len(steps) >= 2 and all(line.startswith("ascent from 64 starts: step = ") for line in steps), lines
    assert "step = 200, 12/64 starts still running" in steps[1]


# --------------------------------------------------------------------------- 7-9: dtype-aware checks


def test_tolerances_know_the_dtype():
    from ncfkit.validate import check_tolerance

    assert check_tolerance("--rtol", 1e-9) == 1e-9
    for bad, why in [(1e-300, "finer than float64"), (float("inf"), "finite and > 0"), (0.0, "finite and > 0"),
                     (float("nan"), "finite and > 0"), (1.0, "must be < 1")]:
        with pytest.raises(InputError, match=why):
            check_tolerance("--rtol", bad)
    with pytest.raises(InputError, match=r"--tol 1e-09: finer than float32 .*1\.19e-07"):
        check_tolerance("--tol", 1e-9, "float32")


def test_scales_and_steps_know_the_dtype():
    from ncfkit.validate import check_scale, check_seed, check_step

    assert check_scale("--delta", 1e-3, 3.0) == 1e-3
    with pytest.raises(InputError, match=r"--delta 1e\+308: .*overflow float64"):
        check_scale("--delta", 1e308, 3.0)
    with pytest.raises(InputError, match=r"below the smallest normal float64"):
        check_scale("--delta", 1e-320, 3.0)
    with pytest.raises(InputError, match=r"gradients .* below the smallest normal float64 .*; no step could move"):
        check_scale("--delta", 1e-200, 3.0)
    with pytest.raises(InputError, match=r"overflow float32"):
        check_scale("--delta", 1e10, 3.0, "float32")
    with pytest.raises(InputError, match=r"one step is longer than --max-time"):
        check_step(1e308, 10.0)
    assert check_seed(2**63 - 1) == 2**63 - 1
    with pytest.raises(InputError, match=r"\[0, 2\^63\)"):
        check_seed(2**63)


_FUZZ = r"""
import sys, pickle
import numpy as np
from ncfkit.io import read_h5
from ncfkit.errors import InputError

src = sys.argv[1]
good = read_h5(src)
data = open(src, "rb").read()
rng = np.random.default_rng(7)
outcomes = {"refused": 0, "intact": 0, "wrong": []}

def same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return type(a) is type(b) and (a == b or a != a and b != b)

for trial in range(60):
    d = bytearray(data)
    for i in rng.integers(0, len(d), int(rng.choice([1, 8, 64, 512]))):
        d[i] ^= int(rng.integers(1, 256))
    path = sys.argv[2]
    open(path, "wb").write(bytes(d))
    try:
        tree = read_h5(path)
    except InputError:
        outcomes["refused"] += 1
        continue
    if same(good, tree):
        outcomes["intact"] += 1
    else:
        outcomes["wrong"].append(trial)
print(outcomes)
sys.exit(1 if outcomes["wrong"] else 0)
"""


@pytest.mark.slow
def test_random_corruption_is_refused_or_harmless(results, tmp_path):
    """60 random corruptions (1 to 512 flipped bytes anywhere) of a kkt file, read in a
    child process (a crash of the HDF5 library would show as its exit code): every read
    is refused as an input error or returns exactly the original content."""
    proc = subprocess.run([sys.executable, "-c", _FUZZ, str(results / "kkt.h5"), str(tmp_path / "fuzz.h5")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_standard_output_is_named(results):
    """``--json > /dev/full``: exit 1, one line saying it is standard output that failed."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "ncfkit", "info", str(results / "kkt.h5"), "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: No space left on device: standard output (rerun with --debug for the traceback)"]


def test_result_left_open_for_writing_is_named_with_the_fix(results, tmp_path):
    """A program that opened a result file for writing and crashed (a notebook kernel)
    leaves HDF5's consistency flags set: the one line says so and how to clear them,
    rather than "corrupted"."""
    p = tmp_path / "left.h5"
    shutil.copy(results / "kkt.h5", p)
    crash = f"import h5py, os; f = h5py.File({str(p)!r}, 'r+'); f.attrs['note'] = 1; f.flush(); os._exit(0)"
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=120)
    one_line(run("info", p), 2, r"left\.h5: marked open for writing by another program .*h5clear -s .*left\.h5'$")


_DATA_FUZZ = r"""
import sys, io, collections
import numpy as np, h5py
from ncfkit.io import load_data
from ncfkit.errors import InputError

folder = sys.argv[1]
rng = np.random.default_rng(11)
X = rng.standard_normal((20, 4)); y = rng.standard_normal(20)
originals = {}
buf = io.BytesIO(); np.savez_compressed(buf, X=X, y=y); originals["npz"] = buf.getvalue()
buf = io.BytesIO(); np.savez(buf, X=X, y=y); originals["npy"] = buf.getvalue()
buf = io.BytesIO()
with h5py.File(buf, "w") as f:
    f["X"], f["y"] = X, y
originals["h5"] = buf.getvalue()
originals["csv"] = ("x1,x2,x3,x4,y\n" + "\n".join(",".join(f"{v:.6g}" for v in row)
                                                  for row in np.column_stack([X, y]))).encode()
outcomes = collections.Counter()
for kind, data in originals.items():
    suffix = {"npy": "npz"}.get(kind, kind)
    for trial in range(40):
        d = bytearray(data)
        for i in rng.integers(0, len(d), int(rng.choice([1, 4, 32]))):
            d[i] = int(rng.integers(0, 256))
        if trial % 10 == 9:
            d = d[: int(rng.integers(1, len(d)))]  # truncated
        path = f"{folder}/f{trial}.{suffix}"
        open(path, "wb").write(bytes(d))
        try:
            ds = load_data(path)
            assert np.isfinite(ds.X).all() and np.isfinite(ds.y).all() and ds.X.shape[0] == ds.y.shape[0]
            outcomes[kind, "read"] += 1
        except InputError as e:
            assert "\n" not in str(e) and path in str(e), str(e)
            outcomes[kind, "refused"] += 1
print(dict(outcomes))
"""


@pytest.mark.slow
def test_mutated_data_files_are_read_or_refused(tmp_path):
    """160 randomly damaged .npz (compressed and not), .h5 and .csv data files, loaded in a
    child process (a crash would show as its exit code): each is read as valid finite
    data, or refused as an input error naming the file on one line."""
    proc = subprocess.run([sys.executable, "-c", _DATA_FUZZ, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
