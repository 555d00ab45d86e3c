"""lungseg.provenance: every identity function against values computed by hand (hashlib, json, git) on
real temporary files and a real git repository."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungseg import provenance as P
from lungseg.errors import DataError

GIT = ["git", "-c", "user.email=test@lungseg", "-c", "user.name=lungseg-test"]


def sh(*cmd, cwd) -> str:
    return subprocess.run(
        list(cmd), cwd=cwd, check=True, capture_output=True, text=True, encoding="utf-8"
    ).stdout.strip()


@pytest.fixture
def git_repo(tmp_path, monkeypatch):
    """A git repository with two commits (tag ``v1`` on the first) and a tracked ``lungseg/`` folder."""
    monkeypatch.delenv(P.GIT_COMMIT_ENV, raising=False)
    repo = tmp_path / "repo"
    (repo / "lungseg").mkdir(parents=True)
    (repo / "lungseg" / "a.py").write_text("x = 1\n", encoding="utf-8")
    sh("git", "init", "-q", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "one", cwd=repo)
    sh("git", "tag", "v1", cwd=repo)
    (repo / "README").write_text("two\n", encoding="utf-8")
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "two", cwd=repo)
    return repo


def test_git_rev_commit_and_code_version(git_repo, tmp_path, monkeypatch):
    head, first = sh("git", "rev-parse", "HEAD", cwd=git_repo), sh("git", "rev-parse", "v1", cwd=git_repo)
    assert head != first
    assert P.git_rev(git_repo) == head and P.git_rev(git_repo, "v1") == first
    assert P.git_rev(git_repo, "no-such-rev") is None
    outside = tmp_path / "plain"
    outside.mkdir()
    assert P.git_rev(outside) is None and P.git_commit(outside) == "unknown"
    assert P.git_commit(git_repo) == head
    assert P.code_version(git_repo) == {"commit": head, "dirty": False, "source": "git"}
    (git_repo / "README").write_text("changed outside lungseg/\n", encoding="utf-8")
    assert P.code_version(git_repo)["dirty"] is False  # only lungseg/ counts
    (git_repo / "lungseg" / "a.py").write_text("x = 2\n", encoding="utf-8")
    assert P.code_version(git_repo) == {"commit": head, "dirty": True, "source": "git"}
    assert P.code_version(outside) == {"commit": None, "dirty": None, "source": "unavailable"}
    # an image without .git names its commit through the environment, for both forms
    monkeypatch.setenv(P.GIT_COMMIT_ENV, "f" * 40)
    assert P.git_commit(outside) == "f" * 40
    assert P.code_version(outside) == {"commit": "f" * 40, "dirty": None, "source": P.GIT_COMMIT_ENV}


def test_file_sha256_and_folder_digest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.bin").write_bytes(b"\x00\x01" * 1000)
    (tmp_path / "sub" / "a.txt").write_bytes(b"hello\n")
    hb, ha = hashlib.sha256(b"\x00\x01" * 1000).hexdigest(), hashlib.sha256(b"hello\n").hexdigest()
    assert P.file_sha256(tmp_path / "b.bin", chunk=7) == hb  # block size does not matter
    want = hashlib.sha256(f"b.bin\t{hb}\nsub/a.txt\t{ha}\n".encode()).hexdigest()
    assert P.folder_digest(tmp_path) == {"sha256": want, "n_files": 2}
    (tmp_path / "sub" / "a.txt").rename(tmp_path / "sub" / "c.txt")  # same bytes, another name
    assert P.folder_digest(tmp_path)["sha256"] != want


def test_dvc_folder_hash_is_dvcs_dir_hash(tmp_path):
    """DVC's ``.dir`` hash: md5 of the JSON list of ``{md5, relpath}`` entries sorted by path."""
    folder = tmp_path / "raw"
    (folder / "img").mkdir(parents=True)
    files = {"img/1.png": b"\x89PNG one", "img/2.png": b"\x89PNG two", "labels.csv": b"id,label\n1,0\n"}
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    entries = [{"md5": hashlib.md5(files[rel]).hexdigest(), "relpath": rel} for rel in sorted(files)]
    want = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert P.dvc_folder_hash(folder) == P.FolderHash(want, 3, sum(map(len, files.values())))
    with pytest.raises(DataError, match="input folder not found"):
        P.dvc_folder_hash(tmp_path / "missing")


def test_data_hash_follows_the_folder_not_a_stale_dvc_lock(tmp_path, monkeypatch):
    """F4 (#20): the processed folder rewritten after the stage ran (`lungseg preprocess --overwrite` with
    another image size): dvc.lock still lists the old md5 (`dvc status`: modified); the run must record
    the folder's content as it is, as DVC itself hashes it, never dvc.lock's old value."""
    import shutil

    repo = tmp_path / "repo"
    data = repo / "data" / "processed" / "medseg"
    _manifest(data, [("a", "train", "i0", "m0"), ("b", "test", "i1", "m1")])
    (data / "images.npy").write_bytes(b"old pixels " * 100)
    sh("git", "init", "-q", cwd=repo)
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    sh(dvc, "init", "-q", cwd=repo)
    (repo / "dvc.yaml").write_text(
        "stages:\n  preprocess:\n    cmd: echo\n    outs:\n    - data/processed/medseg:\n        cache: false\n",
        encoding="utf-8",
    )
    sh(dvc, "commit", "-q", "-f", "preprocess", cwd=repo)  # DVC writes dvc.lock's md5 of the folder
    monkeypatch.chdir(repo)
    old_md5 = P.dvc_lock_md5(data)
    assert old_md5 and old_md5.endswith(".dir")
    assert P.data_hash(data) == (old_md5, "dvc.lock")  # the folder is what dvc.lock says
    (data / "images.npy").write_bytes(b"new pixels, another image size " * 50)  # preprocess --overwrite
    assert "modified" in sh(dvc, "status", "preprocess", cwd=repo)
    new_hash, source = P.data_hash(data)
    assert source == "computed (dvc.lock is stale)" and new_hash != old_md5
    sh(dvc, "commit", "-q", "-f", "preprocess", cwd=repo)  # DVC's own md5 of the new content: the same
    assert P.dvc_lock_md5(data) == new_hash
    assert P.data_hash(data) == (new_hash, "dvc.lock")


def _manifest(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["index,id,split,image_sha256,mask_sha256"] + [",".join(map(str, (i, *r))) for i, r in enumerate(rows)]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_data_hash_from_the_manifest_or_dvc_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "processed"
    _manifest(data, [("a", "train", "i0", "m0"), ("b", "test", "i1", "m1")])
    assert P.data_hash(data) == (hashlib.sha256(b"a\ttrain\ti0\tm0\nb\ttest\ti1\tm1\n").hexdigest(), "manifest")
    # the split assignment is part of it: the same slices split differently are other training data
    _manifest(data, [("a", "test", "i0", "m0"), ("b", "train", "i1", "m1")])
    assert P.data_hash(data)[0] == hashlib.sha256(b"a\ttest\ti0\tm0\nb\ttrain\ti1\tm1\n").hexdigest()
    # DVC's md5 of the folder wins when the nearest dvc.lock lists it as a stage output
    lock = {
        "schema": "2.0",
        "stages": {
            "preprocess": {
                "cmd": "x",
                "outs": [{"path": "data/processed", "md5": "0123456789abcdef0123456789abcdef.dir", "nfiles": 1}],
            }
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")
    assert P.dvc_lock_md5(data) == "0123456789abcdef0123456789abcdef.dir"
    # dvc.lock's md5 is used only when it is the folder's content: this one is not (stale lock)
    actual = P.dvc_folder_hash(data).md5
    assert actual != "0123456789abcdef0123456789abcdef.dir"
    assert P.data_hash(data) == (actual, "computed (dvc.lock is stale)")
    lock["stages"]["preprocess"]["outs"][0]["md5"] = actual
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")
    assert P.data_hash(data) == (actual, "dvc.lock")
    other = tmp_path / "data" / "other"
    _manifest(other, [("a", "train", "i0", "m0")])
    assert P.dvc_lock_md5(other) is None and P.data_hash(other)[1] == "manifest"
    with pytest.raises(DataError, match="manifest.csv: not found"):
        P.data_hash(tmp_path / "data" / "empty")


def test_manifest_fingerprint_is_order_free_and_content_sensitive():
    rows = [{"id": f"s{i}", "image_sha256": f"i{i}", "mask_sha256": f"m{i}"} for i in range(4)]
    want = "sha256:" + hashlib.sha256(b"s0,i0,m0\ns1,i1,m1\ns2,i2,m2\ns3,i3,m3").hexdigest()
    assert P.manifest_fingerprint(rows) == want == P.manifest_fingerprint(list(reversed(rows)))
    changed = [dict(r) for r in rows]
    changed[2]["mask_sha256"] = "other"
    assert P.manifest_fingerprint(changed) != want
    assert P.manifest_fingerprint(rows[:3]) != want
    with pytest.raises(DataError, match="empty evaluation set"):
        P.manifest_fingerprint([])


def test_evaluation_fingerprint_recorded_or_from_per_image_ids(tmp_path):
    assert P.evaluation_fingerprint({"data_fingerprint": "sha256:abc"}, tmp_path) == (
        "sha256:abc",
        "metrics.json:data_fingerprint",
    )
    assert P.evaluation_fingerprint({"split": "test"}, tmp_path) == (None, "none")
    (tmp_path / "per_image.csv").write_text("id,dice\ns2,0.5\ns1,0.7\n", encoding="utf-8")
    want = "ids-sha256:" + hashlib.sha256(b"split=test\ns1\ns2").hexdigest()
    assert P.evaluation_fingerprint({"split": "test"}, tmp_path) == (want, "per_image.csv:ids")


def test_run_identity_tags(tmp_path, monkeypatch, git_repo):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(P.IMAGE_ENV, raising=False)
    monkeypatch.delenv(P.KFP_RUN_ENV, raising=False)
    data = tmp_path / "processed"
    _manifest(data, [("a", "train", "i0", "m0")])
    dhash = hashlib.sha256(b"a\ttrain\ti0\tm0\n").hexdigest()
    head = sh("git", "rev-parse", "HEAD", cwd=git_repo)
    ident = P.run_identity(data, git_repo)
    assert ident.tags() == {"git_commit": head, "data_hash": dhash, "data_hash_source": "manifest"}
    monkeypatch.setenv(P.IMAGE_ENV, "registry.local/lungseg@sha256:" + "1" * 64)
    monkeypatch.setenv(P.KFP_RUN_ENV, "run-42")
    assert P.run_identity(data, git_repo).tags() == {
        "git_commit": head,
        "data_hash": dhash,
        "data_hash_source": "manifest",
        "lungseg.image": "registry.local/lungseg@sha256:" + "1" * 64,
        "lungseg.kfp_run_id": "run-42",
    }


def test_provenance_is_low_level():
    """provenance imports nothing of lungseg but errors (training/evaluation/registry/cli import it)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(P.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("lungseg")} == {"lungseg.errors"}
