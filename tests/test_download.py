"""ML-1M download against a local HTTP server (127.0.0.1, random port); no real network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from cora.data import download
from cora.data.download import download_movielens, resolve_target
from cora.errors import CoraError

from helpers import run_cli


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path == "/cut.zip":  # promises 100 kB, sends 10 bytes, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 cut")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www; yields (base url, folder)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy in the environment must not apply
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _small_ml1m_zip(path: Path) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::1193::5::978300760\n")
        zf.writestr("ml-1m/movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_with_the_right_sha256(server, tmp_path):
    base, www = server
    sha = _small_ml1m_zip(www / "x.zip")
    out = tmp_path / "data"
    out.mkdir()
    path = download_movielens(out, url=f"{base}/x.zip", sha256=sha.upper())
    assert path == out / "ml-1m.zip"
    assert path.read_bytes() == (www / "x.zip").read_bytes()
    assert [p.name for p in out.iterdir()] == ["ml-1m.zip"]  # no temporary file left


def test_sha256_mismatch_leaves_no_file(server, tmp_path):
    base, www = server
    sha = _small_ml1m_zip(www / "x.zip")
    out = tmp_path / "data"
    out.mkdir()
    wrong = "0" * 64
    with pytest.raises(CoraError) as err:
        download_movielens(out, url=f"{base}/x.zip", sha256=wrong)
    assert wrong in str(err.value) and sha in str(err.value)
    assert list(out.iterdir()) == []


def test_mismatch_keeps_an_existing_file(server, tmp_path):
    base, www = server
    _small_ml1m_zip(www / "x.zip")
    target = tmp_path / "mine.zip"
    target.write_bytes(b"previous good copy")
    with pytest.raises(CoraError):
        download_movielens(target, url=f"{base}/x.zip", sha256="1" * 64)
    assert target.read_bytes() == b"previous good copy"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine.zip")] == []


def test_http_404_is_one_line(server, tmp_path):
    base, _ = server
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path / "d", url=f"{base}/missing.zip", sha256="0" * 64)
    assert "HTTP 404" in str(err.value) and "missing.zip" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "d" / "ml-1m.zip").exists()


def test_interrupted_download_leaves_no_file(server, tmp_path):
    base, _ = server
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path, url=f"{base}/cut.zip", sha256="0" * 64)
    assert "cut.zip" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_connection_refused_is_a_cora_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path, url=f"http://127.0.0.1:{port}/x.zip", sha256="0" * 64)
    assert "download failed" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_pinned_sha256_is_checked_by_default(server, tmp_path):
    base, www = server
    sha = _small_ml1m_zip(www / "x.zip")
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path / "a.zip", url=f"{base}/x.zip")
    assert download.ML1M_SHA256 in str(err.value) and sha in str(err.value)
    assert not (tmp_path / "a.zip").exists()


@pytest.fixture
def no_pinned_hash(monkeypatch):
    monkeypatch.setattr(download, "ML1M_SHA256", None)


def test_without_sha256_checks_size_and_contents_and_prints_the_hash(server, tmp_path, monkeypatch, capsys,
                                                                     no_pinned_hash):
    base, www = server
    sha = _small_ml1m_zip(www / "x.zip")
    monkeypatch.setattr(download, "ML1M_SIZE", (www / "x.zip").stat().st_size)
    path = download_movielens(tmp_path / "a.zip", url=f"{base}/x.zip")
    assert path == tmp_path / "a.zip" and path.exists()
    assert sha in capsys.readouterr().err


def test_without_sha256_a_wrong_size_is_rejected(server, tmp_path, no_pinned_hash):
    base, www = server
    _small_ml1m_zip(www / "x.zip")
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path / "a.zip", url=f"{base}/x.zip")
    assert f"{download.ML1M_SIZE:,}" in str(err.value)
    assert not (tmp_path / "a.zip").exists()


def test_without_sha256_a_zip_without_ratings_is_rejected(server, tmp_path, monkeypatch, no_pinned_hash):
    base, www = server
    with zipfile.ZipFile(www / "y.zip", "w") as zf:
        zf.writestr("other/readme.txt", "hello")
    monkeypatch.setattr(download, "ML1M_SIZE", (www / "y.zip").stat().st_size)
    with pytest.raises(CoraError) as err:
        download_movielens(tmp_path / "a.zip", url=f"{base}/y.zip")
    assert "ml-1m/ratings.dat" in str(err.value)
    assert not (tmp_path / "a.zip").exists()


def test_bad_sha256_argument(tmp_path):
    with pytest.raises(CoraError, match="64 hexadecimal"):
        download_movielens(tmp_path, url="http://127.0.0.1:9/x.zip", sha256="abc")


def test_resolve_target(tmp_path):
    assert resolve_target(tmp_path, "ml-1m.zip") == tmp_path / "ml-1m.zip"  # existing folder
    assert resolve_target(f"{tmp_path}/new/", "ml-1m.zip") == tmp_path / "new" / "ml-1m.zip"
    assert resolve_target(tmp_path / "new", "ml-1m.zip") == tmp_path / "new" / "ml-1m.zip"  # no suffix
    assert resolve_target(tmp_path / "my.zip", "ml-1m.zip") == tmp_path / "my.zip"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    return run_cli("data", "download", "movielens", *args, timeout=120, env=env)


def test_cli_download(server, tmp_path):
    base, www = server
    sha = _small_ml1m_zip(www / "x.zip")
    out = tmp_path / "dl"
    out.mkdir()
    res = _cli("--out", str(out), "--url", f"{base}/x.zip", "--sha256", sha)
    assert res.returncode == 0, res.stderr
    assert (out / "ml-1m.zip").read_bytes() == (www / "x.zip").read_bytes()
    assert "saved" in res.stdout


def test_cli_mismatch_is_one_line_and_saves_nothing(server, tmp_path):
    base, www = server
    _small_ml1m_zip(www / "x.zip")
    out = tmp_path / "dl"
    out.mkdir()
    res = _cli("--out", str(out), "--url", f"{base}/x.zip", "--sha256", "f" * 64)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "\n" not in err and "sha256 mismatch" in err and "f" * 64 in err
    assert list(out.iterdir()) == []


def test_cli_404(server, tmp_path):
    base, _ = server
    res = _cli("--out", str(tmp_path), "--url", f"{base}/nothing.zip", "--sha256", "0" * 64)
    assert res.returncode != 0
    assert "HTTP 404" in res.stderr and "\n" not in res.stderr.strip()


def test_the_papers_splits_download_pinned_and_checked(server, tmp_path, shared_data):
    """`cora data download collm-ml1m`: the pinned sha256 is that of the copy the tests read (the
    CoLLM repository's blob, checked from a clone); a changed file is refused and not saved."""
    import shutil

    from cora.data.download import COLLM_ML1M_SHA256, download_collm_ml1m

    base, www = server
    shutil.copy(shared_data / "collm-ml-1m.zip", www / "ml-1m.zip")
    assert hashlib.sha256((www / "ml-1m.zip").read_bytes()).hexdigest() == COLLM_ML1M_SHA256
    path = download_collm_ml1m(tmp_path / "dl", url=f"{base}/ml-1m.zip")
    assert path == tmp_path / "dl" / "collm-ml-1m.zip" and path.stat().st_size == 4134100
    (www / "other.zip").write_bytes(b"PK not the splits")
    with pytest.raises(CoraError, match="sha256 mismatch"):
        download_collm_ml1m(tmp_path / "dl2", url=f"{base}/other.zip")
    assert not (tmp_path / "dl2" / "collm-ml-1m.zip").exists()


def test_an_experiment_source_may_be_a_download_name_or_a_local_copy(tmp_path, monkeypatch):
    """`source: collm-ml1m` downloads the splits once beside `data`; `--source FILE` uses a copy."""
    from types import SimpleNamespace

    from cora.data import collm_import
    from cora.experiment import command
    from cora.experiment.execute import ensure_data

    fetched, imported = [], []

    def fake_download(path):
        fetched.append(path)
        Path(path).write_bytes(b"zip")

    monkeypatch.setitem(download.DOWNLOADS, "collm-ml1m", (fake_download, "collm-ml-1m.zip"))
    monkeypatch.setattr(collm_import, "import_collm", lambda src, out, trust_pickle: imported.append(Path(src)))
    exp = SimpleNamespace(data=str(tmp_path / "runs" / "ml1m"), source="collm-ml1m", trust_pickle=True)
    (tmp_path / "runs").mkdir()
    ensure_data(exp)
    assert fetched == [tmp_path / "runs" / "collm-ml-1m.zip"] and imported == fetched
    exp.source = "collm-ml1m"
    ensure_data(exp)  # the copy is there: no second download
    assert len(fetched) == 1 and len(imported) == 2
    with pytest.raises(CoraError, match="--source nowhere.zip: no such file"):
        command.run_command(Path("x.yaml"), source=Path("nowhere.zip"))
