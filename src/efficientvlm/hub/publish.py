"""Publish an EfficientVLM checkpoint to the Hugging Face Hub as a self-contained repository.

The repository holds exactly:

* ``config.json`` with an ``auto_map`` entry for every Auto class that can load the checkpoint (``AutoConfig``,
  ``AutoModel``, and the head's own class: ``AutoModelForVisualQuestionAnswering``, ``AutoModelForPreTraining`` or
  ``AutoModelForImageTextToText``) and, for VQA heads, a ``custom_pipelines`` entry for ``visual-question-answering``;
  ``model.safetensors`` (and ``generation_config.json`` for the generative heads: captioning, generative VQA);
* the processor files (``processor_config.json`` with ``auto_map`` for ``AutoProcessor`` / ``AutoImageProcessor``,
  ``tokenizer.json``, ``tokenizer_config.json``);
* the remote-code modules the ``auto_map`` and ``custom_pipelines`` entries point to, and the sibling modules they
  import (``configuration_efficientvlm.py``, ``modeling_efficientvlm.py``, ``loading_efficientvlm.py``,
  ``image_processing_efficientvlm.py``, ``processing_efficientvlm.py``, and ``pipeline_efficientvlm.py`` for VQA).
  They are checked to import nothing but the standard library, torch, numpy, PIL, transformers and each other
  (relatively), so that ``trust_remote_code=True`` works for users without efficientvlm;
* ``README.md`` (the model card) and, when given, ``pruning_report.json`` / ``pruning_report.png``;
* when given, ``extra_files`` (``{path in the repository: local file}``, e.g. the figures the card shows). Their names
  are checked not to take the place of a file above, and their sources to exist, before anything is written.

The folder is uploaded in one commit. A dry run writes the very same folder and uploads nothing.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import fnmatch
import inspect
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .cards import load_card, merge_card_metadata, render_model_card

VQA_PIPELINE_TASK = "visual-question-answering"
PRUNING_REPORT_FILE = "pruning_report.json"
PRUNING_FIGURE_FILE = "pruning_report.png"

#: Top-level packages remote-code modules may import (besides the standard library and each other).
REMOTE_CODE_ALLOWED_IMPORTS = frozenset({"torch", "numpy", "PIL", "transformers"})

#: Auto classes of each head (``AutoConfig`` and ``AutoModel`` apply to every checkpoint). Retrieval and NLVR2 heads
#: have no Auto class in transformers.
HEAD_AUTO_CLASSES: dict[str, tuple[str, ...]] = {
    "EfficientVLMModel": (),
    "EfficientVLMForPreTraining": ("AutoModelForPreTraining",),
    "EfficientVLMForVisualQuestionAnswering": ("AutoModelForVisualQuestionAnswering",),
    "EfficientVLMForImageTextRetrieval": (),
    "EfficientVLMForNLVR2": (),
    "EfficientVLMForCaptioning": ("AutoModelForImageTextToText",),
    "EfficientVLMForGenerativeVQA": ("AutoModelForVisualQuestionAnswering",),
}

#: Model-card kind of each head.
CARD_TASK_OF_HEAD: dict[str, str] = {
    "EfficientVLMModel": "pretraining",
    "EfficientVLMForPreTraining": "pretraining",
    "EfficientVLMForVisualQuestionAnswering": "vqa",
    "EfficientVLMForImageTextRetrieval": "retrieval",
    "EfficientVLMForNLVR2": "nlvr2",
    "EfficientVLMForCaptioning": "captioning",
    "EfficientVLMForGenerativeVQA": "vqa",
}

#: Files a push owns: at the next push, those no longer produced (e.g. a dropped pruning figure) are deleted from the
#: repository. Other files (a user's notebooks, images, .gitattributes) are left alone.
MANAGED_FILE_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*_efficientvlm.py", "config.json",
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "chat_template.jinja", PRUNING_REPORT_FILE,
    PRUNING_FIGURE_FILE,
)


#: Names ``extra_files`` may not take: every file the library writes (or may write) into a repository. Matched against
#: the whole path in the repository, ignoring case (``*`` also matches ``/``, so ``*.py`` covers sub-folders).
RESERVED_FILE_PATTERNS = (*MANAGED_FILE_PATTERNS, "README.md", "*.py", "pruning_report.*")


class RemoteCodeError(ValueError):
    """A module meant for the Hub imports something a user without efficientvlm would not have."""


class HubAccessError(ConnectionError):
    """The Hub cannot be used for a push: offline mode, no token, a refused token, or no network."""


#: Seconds ``check_hub_access`` waits for the Hub to answer.
HUB_ACCESS_TIMEOUT = 10.0


def check_hub_access(api: HfApi | None = None, token: str | None = None,
                     timeout: float = HUB_ACCESS_TIMEOUT) -> dict[str, Any]:
    """Check, before anything is rendered or uploaded, that a push can work: not offline, a token, a Hub that answers
    and accepts the token (one ``whoami`` call, given ``timeout`` seconds).

    Returns:
        The ``whoami`` answer (the account the token belongs to).

    Raises:
        HubAccessError: with the cause and the fix, e.g. ``HF_HUB_OFFLINE`` is set, no token is stored or given, the
            token is refused (HTTP 401) or read-only, or the Hub cannot be reached within ``timeout``.
    """
    api = api or HfApi(token=token)
    endpoint = getattr(api, "endpoint", None) or "the Hub"
    dry_run = "or write the repository folder locally with --dry-run DIR (dry_run_dir=) instead"
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["answer"] = api.whoami(token=token, cache=True)  # a second check costs no request
        except BaseException as error:  # reported below, in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=call, name="efficientvlm-whoami", daemon=True)  # daemon: a hung call never
    worker.start()                                                                   # keeps the process alive
    worker.join(timeout)
    if worker.is_alive():
        raise HubAccessError(f"No answer from {endpoint} within {timeout:g} s: check the network connection (and "
                             f"HF_ENDPOINT / proxy settings), {dry_run}.")
    error = outcome.get("error")
    no_token = ("log in with `hf auth login`, set HF_TOKEN, or pass --token (token= in Python) with a write token")
    # huggingface_hub looks for the token before it notices offline mode: report offline mode first
    if isinstance(error, OfflineModeIsEnabled) or (isinstance(error, LocalTokenNotFoundError)
                                                   and constants.HF_HUB_OFFLINE):
        also = f" No token is stored either: {no_token}." if isinstance(error, LocalTokenNotFoundError) else ""
        raise HubAccessError(f"HF_HUB_OFFLINE is set, so nothing can be pushed to {endpoint}: unset HF_HUB_OFFLINE "
                             f"(and TRANSFORMERS_OFFLINE), {dry_run}.{also}") from error
    if isinstance(error, LocalTokenNotFoundError):
        raise HubAccessError(f"No Hugging Face token: {no_token}; {dry_run} (it needs none).") from error
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            raise HubAccessError(f"{endpoint} refused the token (401 Unauthorized): it is invalid or expired. Create "
                                 "a write token at https://huggingface.co/settings/tokens and log in again (hf auth "
                                 "login), or pass --token.") from error
        raise HubAccessError(f"{endpoint} answered HTTP {status} to the token check ({error}); try again later, "
                             f"{dry_run}.") from error
    if error is not None:
        if not isinstance(error, Exception):
            raise error
        raise HubAccessError(f"Cannot reach {endpoint} ({type(error).__name__}: {error}): check the network "
                             f"connection (and HF_ENDPOINT / proxy settings), {dry_run}.") from error
    answer = outcome.get("answer") or {}
    role = ((answer.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAccessError(f"The token of {answer.get('name', 'this account')} is read-only: pushing needs a write "
                             "token (https://huggingface.co/settings/tokens); log in with it (hf auth login) or pass "
                             "--token.")
    return answer


@dataclass
class PushResult:
    """What ``push_to_hub`` did.

    Attributes:
        repo_id: the repository.
        revision: the branch committed to (``None``: the default branch).
        files: the repository paths that were written, sorted.
        folder: the dry-run folder (``None`` when the folder was uploaded).
        commit: the commit (``None`` for a dry run).
        card: the model card that was written (after merging the metadata already on the Hub).
    """

    repo_id: str
    revision: str | None
    files: list[str]
    folder: Path | None = None
    commit: CommitInfo | None = None
    card: ModelCard | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------------------------
# Remote code
# ---------------------------------------------------------------------------------------------------------------


def _module_file(obj: Any) -> Path:
    cls = obj if isinstance(obj, type) else type(obj)
    path = inspect.getsourcefile(cls)
    if path is None:
        raise RemoteCodeError(f"Cannot find the source file of {cls.__qualname__}.")
    return Path(path)


def remote_code_imports(path: str | os.PathLike) -> list[str]:
    """Check that a module can run as Hub remote code and return the sibling modules it imports.

    Every import (also inside functions) must be relative to a sibling (``from .x import y``), of the standard
    library, or of a package in ``REMOTE_CODE_ALLOWED_IMPORTS``.

    Raises:
        RemoteCodeError: naming the file, line and import that is not allowed.
    """
    path = Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    siblings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            level = 0
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            level = node.level
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if level == 1 and name and "." not in name:
                if not (path.parent / f"{name}.py").is_file():
                    raise RemoteCodeError(f"{path.name}:{node.lineno} imports .{name}, which is not a sibling module.")
                siblings.append(name)
            elif level == 0 and (top in REMOTE_CODE_ALLOWED_IMPORTS or top in sys.stdlib_module_names):
                continue
            else:
                shown = "." * level + name
                raise RemoteCodeError(
                    f"{path.name}:{node.lineno} imports {shown!r}: Hub remote code may only import the standard "
                    f"library, {sorted(REMOTE_CODE_ALLOWED_IMPORTS)} and sibling modules (from .module import ...)."
                )
    return sorted(set(siblings))


def remote_code_files(*objects: Any) -> dict[str, Path]:
    """The modules defining ``objects`` (classes or instances) and every sibling they import, checked for the Hub.

    Returns:
        ``{file name: source path}``.
    """
    pending = [_module_file(obj) for obj in objects]
    directories = {path.parent for path in pending}
    if len(directories) != 1:
        raise RemoteCodeError(f"Remote-code modules must live in one folder (relative imports), got {directories}.")
    files: dict[str, Path] = {}
    while pending:
        path = pending.pop()
        if path.name in files:
            continue
        files[path.name] = path
        pending.extend(path.parent / f"{name}.py" for name in remote_code_imports(path))
    return dict(sorted(files.items()))


def auto_map_of(model: Any) -> dict[str, str]:
    """The ``config.auto_map`` of a model: ``AutoConfig``, ``AutoModel`` and its head's Auto class."""
    head = type(model).__name__
    if head not in HEAD_AUTO_CLASSES:
        raise ValueError(f"Cannot publish a {head}: expected one of {sorted(HEAD_AUTO_CLASSES)}.")
    modeling = _module_file(model).stem
    configuration = _module_file(model.config).stem
    auto_map = {
        "AutoConfig": f"{configuration}.{type(model.config).__name__}",
        "AutoModel": f"{modeling}.EfficientVLMModel",
    }
    for auto_class in HEAD_AUTO_CLASSES[head]:
        auto_map[auto_class] = f"{modeling}.{head}"
    return auto_map


def _vqa_pipeline_class() -> type:
    from ..models.pipeline_efficientvlm import EfficientVLMVQAPipeline

    return EfficientVLMVQAPipeline


def custom_pipelines_of(model: Any) -> dict[str, dict[str, Any]]:
    """The ``config.custom_pipelines`` entry: ``visual-question-answering`` for VQA heads, else nothing."""
    if "AutoModelForVisualQuestionAnswering" not in HEAD_AUTO_CLASSES.get(type(model).__name__, ()):
        return {}
    pipeline_class = _vqa_pipeline_class()
    return {
        VQA_PIPELINE_TASK: {
            "impl": f"{_module_file(pipeline_class).stem}.{pipeline_class.__name__}",
            "pt": ["AutoModelForVisualQuestionAnswering"],
            "type": "multimodal",
        }
    }


@contextlib.contextmanager
def _auto_classes_set(classes: Mapping[type, str]) -> Iterator[None]:
    """Temporarily ``register_for_auto_class`` the given classes, so that ``save_pretrained`` writes the
    ``auto_map`` entries exactly as this transformers version expects them (nested in ``processor_config.json``)."""
    saved = {cls: cls.__dict__.get("_auto_class", _MISSING) for cls in classes}
    try:
        for cls, auto_class in classes.items():
            cls._auto_class = auto_class
        yield
    finally:
        for cls, value in saved.items():
            if value is _MISSING:
                del cls._auto_class
            else:
                cls._auto_class = value


_MISSING = object()


# ---------------------------------------------------------------------------------------------------------------
# Assembling the repository folder
# ---------------------------------------------------------------------------------------------------------------


def _check_source(path: str | os.PathLike | None, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{what}: the file {path} does not exist.")


def _read_pruning_report(report: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any] | None:
    if report is None:
        return None
    if isinstance(report, Mapping):
        return dict(report)
    return json.loads(Path(report).read_text(encoding="utf-8"))


def _reserved_name_fix(pattern: str) -> str:
    if pattern.casefold() == "readme.md":
        return "pass a finished model card with card=... instead"
    if pattern.startswith("pruning_report"):
        return "pass the report and its figure with pruning_report=... / pruning_figure=... instead"
    return "give the extra file another name (the key of extra_files is its path in the repository)"


def _check_repo_path(name: Any) -> str:
    """``name`` as a plain relative POSIX path in the repository (sub-folders allowed), or a ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"extra_files: {name!r} is not a file name; the keys of extra_files are paths in the "
                         "repository, such as 'training_curves.png' or 'figures/latency.png'.")
    parts = name.split("/")
    if "\\" in name or any(part in ("", ".", "..", ".git") for part in parts) or name != name.strip():
        raise ValueError(f"extra_files: {name!r} is not a plain relative path in the repository: use a file name, "
                         "optionally in sub-folders separated by '/' (no leading '/', no '\\', '.', '..', '.git' or "
                         "empty parts), such as 'training_curves.png' or 'figures/latency.png'.")
    for pattern in RESERVED_FILE_PATTERNS:
        if fnmatch.fnmatchcase(name.casefold(), pattern.casefold()):
            raise ValueError(f"extra_files: {name!r} would replace a file the library writes ({pattern}); "
                             f"{_reserved_name_fix(pattern)}.")
    return name


def check_extra_files(extra_files: Mapping[str, str | os.PathLike] | None) -> dict[str, Path]:
    """Check the extra files of a push before anything is written or uploaded.

    Args:
        extra_files: ``{path in the repository: local file}``. Paths are plain relative POSIX paths (sub-folders
            allowed) that do not name a file the library writes (``RESERVED_FILE_PATTERNS``: ``config.json``,
            weights, ``README.md``, processor files, ``*.py``, ``pruning_report.*``, ...).

    Returns:
        ``{path in the repository: source path}``, sorted by path.

    Raises:
        ValueError: a path is not a plain relative path, or names a file the library writes.
        FileNotFoundError: a source file does not exist.
    """
    if extra_files is None:
        return {}
    if not isinstance(extra_files, Mapping):
        raise TypeError("extra_files must map paths in the repository to local files, e.g. "
                        "{'training_curves.png': 'out/training_curves.png'}.")
    checked = {_check_repo_path(name): Path(source) for name, source in extra_files.items()}
    for name, source in checked.items():
        if not source.is_file():
            raise FileNotFoundError(f"extra_files[{name!r}]: the source file {source} does not exist.")
    return dict(sorted(checked.items()))


def build_model_card(model: Any, repo_id: str, *, pruning_report: Mapping[str, Any] | None = None,
                     pruning_figure: str | None = None, **card_kwargs: Any) -> ModelCard:
    """Render the card of ``model`` with [`render_model_card`], filling what the model knows (task, config,
    parameter count, teacher recorded by ``create_student``, ``config.pruning_info``)."""
    head = type(model).__name__
    task = card_kwargs.pop("task", None) or CARD_TASK_OF_HEAD.get(head)
    if task is None:
        raise ValueError(f"No model card for a {head}; pass task=...")
    if "base_model" not in card_kwargs:
        teacher = (getattr(model.config, "student_of", None) or {}).get("teacher")
        if isinstance(teacher, str) and teacher.count("/") == 1 and not os.path.exists(teacher):
            card_kwargs["base_model"] = teacher  # a Hub id, not a local path
    if pruning_report is None:
        pruning_report = getattr(model.config, "pruning_info", None)
    return render_model_card(
        task, repo_id=repo_id, config=model.config, num_parameters=model.num_parameters(),
        pruning_report=pruning_report, pruning_figure=pruning_figure, architecture=head, **card_kwargs,
    )


def assemble_repo_folder(model: Any, processor: Any, folder: str | os.PathLike, *, card: ModelCard,
                         pruning_report: Mapping[str, Any] | None = None,
                         pruning_figure: str | os.PathLike | None = None,
                         extra_files: Mapping[str, str | os.PathLike] | None = None) -> list[str]:
    """Write the repository of ``model`` + ``processor`` into the empty (or new) ``folder``.

    Args:
        extra_files: ``{path in the repository: local file}`` copied into the folder (see [`check_extra_files`]).

    Returns:
        The repository paths written, sorted.

    Raises:
        ValueError: ``folder`` is not empty, the processor is missing, or an extra file has a bad or reserved name
            (raised before anything is written).
        FileNotFoundError: the pruning figure or an extra file does not exist (before anything is written).
        RemoteCodeError: a module to ship imports something outside the allowed set.
    """
    extras = check_extra_files(extra_files)
    _check_source(pruning_figure, "pruning_figure")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: the repository folder must hold exactly what is published.")
    if processor is None or getattr(processor, "image_processor", None) is None:
        raise ValueError("Publishing needs the processor (image processor + tokenizer) next to the model.")
    folder.mkdir(parents=True, exist_ok=True)
    pipeline_objects = [_vqa_pipeline_class()] if custom_pipelines_of(model) else []
    code = remote_code_files(model.config, model, processor, processor.image_processor, *pipeline_objects)

    model.save_pretrained(folder)
    config = copy.deepcopy(model.config)  # the user's model keeps its config untouched
    config.auto_map = auto_map_of(model)
    # entries a loaded config set aside because this process serves them (see EfficientVLMConfig): decided afresh
    config.__dict__.pop("_installed_custom_pipelines", None)
    pipelines = custom_pipelines_of(model)
    if pipelines:
        config.custom_pipelines = pipelines
    elif hasattr(config, "custom_pipelines"):
        del config.custom_pipelines
    config.save_pretrained(folder)

    with _auto_classes_set({type(processor): "AutoProcessor", type(processor.image_processor): "AutoImageProcessor"}):
        processor.save_pretrained(folder)
    for name, source in code.items():
        shutil.copyfile(source, folder / name)
    shipped = {path.name for path in folder.glob("*.py")}
    if shipped != set(code):
        raise RemoteCodeError(f"save_pretrained wrote modules {sorted(shipped - set(code))} that were not checked.")

    card.save(folder / "README.md")
    if pruning_report is not None:
        (folder / PRUNING_REPORT_FILE).write_text(json.dumps(pruning_report, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
    if pruning_figure is not None:
        shutil.copyfile(pruning_figure, folder / PRUNING_FIGURE_FILE)
    for name, source in extras.items():
        target = folder / name
        if target.exists():  # the name checks should make this impossible; never overwrite silently
            raise ValueError(f"extra_files: {name!r} is also written by the library; give the extra file another name.")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------------------


def _existing_card(api: HfApi, repo_id: str, revision: str | None, token: str | None) -> ModelCard | None:
    try:
        path = api.hf_hub_download(repo_id, "README.md", revision=revision, token=token)
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
        return None
    return load_card(path, ignore_metadata_errors=True)  # a broken card on the Hub must not block a push


def push_to_hub(
    model: Any,
    processor: Any,
    repo_id: str,
    *,
    card: ModelCard | str | os.PathLike | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
    token: str | None = None,
    pruning_report: Mapping[str, Any] | str | os.PathLike | None = None,
    pruning_figure: str | os.PathLike | None = None,
    keep_existing_metadata: bool = True,
    api: HfApi | None = None,
    extra_files: Mapping[str, str | os.PathLike] | None = None,
    **card_kwargs: Any,
) -> PushResult:
    """Publish ``model`` and ``processor`` as a self-contained Hub repository, in one commit.

    Args:
        model: an EfficientVLM model (any head).
        processor: its ``EfficientVLMProcessor``.
        repo_id: ``"org/name"``.
        card: a ready ``ModelCard`` or the path of a ``README.md``; by default the card is rendered from the model
            and ``card_kwargs``.
        private: create the repository private. Pushing with ``private=True`` to an existing public repository is
            refused (its visibility is never changed silently).
        revision: branch to commit to; created from the default branch if missing.
        commit_message: defaults to a message naming the head.
        dry_run_dir: write the repository folder here (must be empty or new) and upload nothing. Without it, the
            token and the connection are checked first (``check_hub_access``: a ``HubAccessError`` says what is
            wrong, e.g. ``HF_HUB_OFFLINE``, no token, a refused token, no network).
        token: Hub token (defaults to the stored login).
        pruning_report: pruning report (dict or JSON file) uploaded as ``pruning_report.json`` and rendered in the
            card; defaults to ``model.config.pruning_info`` for the card.
        pruning_figure: PNG uploaded as ``pruning_report.png`` and shown in the card.
        keep_existing_metadata: merge the metadata (tags, datasets, eval results, ...) of the card already in the
            repository into the new card, so that a second push keeps it (see ``merge_card_metadata``).
        api: the ``HfApi`` to use (a stand-in in tests).
        extra_files: ``{path in the repository: local file}`` added to the commit (and to a dry run's folder), e.g.
            ``{"training_curves.png": "out/curves.png"}`` for the card's ``figures``. Checked first (see
            [`check_extra_files`]): a bad or reserved name is a ValueError, a missing file a FileNotFoundError,
            raised before anything is written or uploaded. They are not managed files: an extra file left out of a
            later push stays in the repository.
        card_kwargs: passed to [`render_model_card`] (``task``, ``base_model``, ``datasets``, ``eval_results``,
            ``license``, ``tags``, ``summary``, ``example_question``, ``example_image``, ``limitations``,
            ``figures``, ...).

    Returns:
        A [`PushResult`].
    """
    extras = check_extra_files(extra_files)  # before anything is rendered, written or uploaded
    if dry_run_dir is None:
        api = api or HfApi(token=token)
        check_hub_access(api, token)
    _check_source(pruning_figure, "pruning_figure")
    report = _read_pruning_report(pruning_report)
    figure_in_repo = PRUNING_FIGURE_FILE if pruning_figure is not None else None
    if card is None:
        card = build_model_card(model, repo_id, pruning_report=report, pruning_figure=figure_in_repo, **card_kwargs)
    else:
        if card_kwargs:
            raise TypeError(f"Pass either card or card keyword arguments, not both (got {sorted(card_kwargs)}).")
        card = card if isinstance(card, ModelCard) else load_card(card)
    head = type(model).__name__
    commit_message = commit_message or f"Upload {head} (EfficientVLM)"

    if dry_run_dir is not None:
        files = assemble_repo_folder(model, processor, dry_run_dir, card=card, pruning_report=report,
                                     pruning_figure=pruning_figure, extra_files=extras)
        return PushResult(repo_id, revision, files, folder=Path(dry_run_dir), card=card)

    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
    if private and not api.repo_info(repo_id, repo_type="model", token=token).private:
        raise ValueError(f"{repo_id} exists and is public; refusing to push with private=True. Make it private on "
                         "the Hub first, or push without private=True.")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
    if keep_existing_metadata:
        existing = _existing_card(api, repo_id, revision, token)
        if existing is not None:
            card = merge_card_metadata(card, existing)
    with tempfile.TemporaryDirectory(prefix="efficientvlm-push-") as tmp:
        folder = Path(tmp) / "repo"
        files = assemble_repo_folder(model, processor, folder, card=card, pruning_report=report,
                                     pruning_figure=pruning_figure, extra_files=extras)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision, token=token,
            commit_message=commit_message, delete_patterns=list(MANAGED_FILE_PATTERNS),
        )
    return PushResult(repo_id, revision, files, commit=commit, card=card)


__all__ = [
    "CARD_TASK_OF_HEAD",
    "HEAD_AUTO_CLASSES",
    "HUB_ACCESS_TIMEOUT",
    "HubAccessError",
    "MANAGED_FILE_PATTERNS",
    "PushResult",
    "RESERVED_FILE_PATTERNS",
    "RemoteCodeError",
    "assemble_repo_folder",
    "auto_map_of",
    "build_model_card",
    "check_extra_files",
    "check_hub_access",
    "custom_pipelines_of",
    "push_to_hub",
    "remote_code_files",
    "remote_code_imports",
]
