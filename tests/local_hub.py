"""A folder-backed stand-in for the Hugging Face Hub API, and a Hub cache laid out like real downloads.

``LocalFolderHfApi`` implements the ``HfApi`` methods the library calls (create_repo, repo_info, create_branch,
upload_folder, create_commit, hf_hub_download, list_repo_files), storing every branch of every repository as a
folder. Any other ``HfApi`` method would go to the network, which the offline test session forbids.

``snapshot_into_cache`` copies a branch into a ``huggingface_hub`` cache (``models--org--name/{blobs,refs,snapshots}``)
as a download would, so that ``from_pretrained("org/name")`` can then load it with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from pathlib import Path

from httpx2 import Request, Response
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import ModelInfo


def _http_404(url: str) -> Response:
    return Response(404, request=Request("GET", url))


class LocalFolderHfApi(HfApi):
    """Repositories are folders ``root/<org>/<name>/<branch>/``; commits are recorded in ``self.commits``."""

    def __init__(self, root: str | os.PathLike, user: str = "test-user"):
        super().__init__(token=False)
        self.root = Path(root)
        self.user = user
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {branch: commit oid}}
        self.commits: list[dict] = []

    def whoami(self, token=None, *, cache: bool = False) -> dict:
        """The account of the (pretend) token: pushes check it first, as they do on the Hub."""
        return {"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}}}

    # -- repositories and branches ----------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> dict:
        if repo_id not in self.repos:
            raise RepositoryNotFoundError(f"Repository {repo_id} not found.",
                                          response=_http_404(f"https://huggingface.co/{repo_id}"))
        return self.repos[repo_id]

    def _tree(self, repo_id: str, revision: str | None) -> Path:
        branch = revision or "main"
        if branch not in self._repo(repo_id)["branches"]:
            raise RevisionNotFoundError(f"Revision {branch} not found in {repo_id}.",
                                        response=_http_404(f"https://huggingface.co/{repo_id}/tree/{branch}"))
        return self.root / repo_id / branch

    def create_repo(self, repo_id: str, *, token=None, private: bool | None = None, repo_type=None,
                    exist_ok: bool = False, **kwargs) -> RepoUrl:
        repo_id = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        if repo_id in self.repos:
            if not exist_ok:
                raise ValueError(f"409 Conflict: {repo_id} already exists.")
        else:
            self.repos[repo_id] = {"private": bool(private), "branches": {"main": self._new_commit(repo_id, "main",
                                                                                                  "initial commit")}}
            (self.root / repo_id / "main").mkdir(parents=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def repo_info(self, repo_id: str, *, repo_type=None, token=None, revision=None, **kwargs) -> ModelInfo:
        repo = self._repo(repo_id)
        return ModelInfo(id=repo_id, private=repo["private"], sha=repo["branches"][revision or "main"])

    def create_branch(self, repo_id: str, *, branch: str, revision: str | None = None, token=None, repo_type=None,
                      exist_ok: bool = False) -> None:
        repo = self._repo(repo_id)
        if branch in repo["branches"]:
            if not exist_ok:
                raise ValueError(f"409 Conflict: branch {branch} exists in {repo_id}.")
            return
        shutil.copytree(self._tree(repo_id, revision), self.root / repo_id / branch)
        repo["branches"][branch] = repo["branches"][revision or "main"]

    # -- commits ----------------------------------------------------------------------------------------------

    def _new_commit(self, repo_id: str, branch: str, message: str, added=(), deleted=()) -> str:
        oid = hashlib.sha1(f"{repo_id}@{branch}#{len(self.commits)}:{message}".encode()).hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": branch, "oid": oid, "message": message,
                             "added": sorted(added), "deleted": sorted(deleted)})
        return oid

    def _commit_info(self, repo_id: str, oid: str, message: str) -> CommitInfo:
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=message,
                          commit_description="", oid=oid)

    def upload_folder(self, *, repo_id: str, folder_path, path_in_repo: str | None = None,
                      commit_message: str | None = None, revision: str | None = None, delete_patterns=None,
                      allow_patterns=None, ignore_patterns=None, token=None, repo_type=None, **kwargs) -> CommitInfo:
        folder = Path(folder_path)
        uploads = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        tree = self._tree(repo_id, revision)
        deleted = []
        if delete_patterns:
            patterns = [delete_patterns] if isinstance(delete_patterns, str) else list(delete_patterns)
            for path in sorted(self.list_repo_files(repo_id, revision=revision)):
                if path not in uploads and any(fnmatch.fnmatch(path, p) for p in patterns):
                    (tree / path).unlink()
                    deleted.append(path)
        for path in uploads:
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / path, tree / path)
        message = commit_message or "Upload folder"
        oid = self._new_commit(repo_id, revision or "main", message, uploads, deleted)
        self.repos[repo_id]["branches"][revision or "main"] = oid
        return self._commit_info(repo_id, oid, message)

    def create_commit(self, repo_id: str, operations, *, commit_message: str, revision: str | None = None,
                      token=None, repo_type=None, **kwargs) -> CommitInfo:
        tree = self._tree(repo_id, revision)
        added, deleted = [], []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                (tree / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                source = op.path_or_fileobj
                if isinstance(source, (str, Path)):
                    shutil.copyfile(source, tree / op.path_in_repo)
                else:
                    (tree / op.path_in_repo).write_bytes(source if isinstance(source, bytes) else source.read())
                added.append(op.path_in_repo)
            elif isinstance(op, CommitOperationDelete):
                (tree / op.path_in_repo).unlink()
                deleted.append(op.path_in_repo)
        oid = self._new_commit(repo_id, revision or "main", commit_message, added, deleted)
        self.repos[repo_id]["branches"][revision or "main"] = oid
        return self._commit_info(repo_id, oid, commit_message)

    # -- reading ----------------------------------------------------------------------------------------------

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, repo_type=None, token=None) -> list[str]:
        tree = self._tree(repo_id, revision)
        return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = None, **kwargs) -> str:
        path = self._tree(repo_id, revision) / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not found in {repo_id}@{revision or 'main'}.")
        return str(path)

    def file_exists(self, repo_id: str, filename: str, *, revision: str | None = None, **kwargs) -> bool:
        try:
            return (self._tree(repo_id, revision) / filename).is_file()
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return False


def _blob_name(path: Path) -> str:
    """The blob name a download uses: sha256 for LFS files (weights), else the git blob sha1."""
    data = path.read_bytes()
    if path.suffix in (".safetensors", ".bin", ".png"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def snapshot_into_cache(api: LocalFolderHfApi, repo_id: str, cache_dir: str | os.PathLike,
                        revision: str | None = None) -> Path:
    """Lay out ``repo_id`` at ``revision`` in a Hub cache as ``snapshot_download`` would; returns the snapshot."""
    branch = revision or "main"
    commit = api.repos[repo_id]["branches"][branch]
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    (repo_dir / "refs" / branch).write_text(commit)
    tree = api._tree(repo_id, branch)
    for name in api.list_repo_files(repo_id, revision=branch):
        blob = repo_dir / "blobs" / _blob_name(tree / name)
        if not blob.exists():
            shutil.copyfile(tree / name, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot
