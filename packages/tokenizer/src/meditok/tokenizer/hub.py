"""Hugging Face Hub names for weights: the one resolver every door uses.

`MedITok.from_pretrained`, the `meditok` CLI's `--weights`, `MedITokAR.from_pretrained` / `meditok-ar` and
`meditok-eval` all turn what the user typed into a local path here, then load that path as before:

    meditok_simple_v1.pth, my-tokenizer/       a path that exists locally always wins
    massaki75/meditok                          the published weights: meditok_simple_v1.pth (no config.json there)
    massaki75/meditok/meditok_ckpt_v1.pth      one file of a repository (the `filename=` argument)
    org/name@v1.0, hf://org/name@v1.0/file     a revision (branch, tag, commit); `hf://` as in HfFileSystem's paths
    org/name                                   a folder this project writes (config.json + model.safetensors + card)

Downloads go through `huggingface_hub` (the tokenizer's optional `[hub]` extra) into its cache, so `HF_HUB_OFFLINE=1`,
`HF_HUB_CACHE`, `HF_TOKEN` and `HF_ENDPOINT` work as for any Hub library. Nothing here unpickles: the files are read
by `meditok.tokenizer.checkpoint` afterwards, with its allow-list. Every failure is one `HubError` line naming the
repository, the file and how to pass a local path instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

PUBLISHED_REPO = "massaki75/meditok"
# The published repository holds two pickles; the plain state dict is the one inference needs (the other adds the
# training state, several times larger).
DEFAULT_FILENAME = "meditok_simple_v1.pth"
MODEL_CARD_NAME = "README.md"
# Repository and organisation names as the Hub allows them (letters, digits, '-', '_', '.'; no leading punctuation).
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_NAME = re.compile(rf"^(?:hf://)?(?:models/)?(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^/]+))?(?:/(?P<file>.+))?$")
# A folder repository may also carry the release's companions (text_alignment.*); pickles are never fetched with it.
_FOLDER_IGNORE = ["*.pth", "*.pt", "*.bin", "*.ckpt", "*.pkl"]


class HubError(CheckpointError):
    """A Hub name that cannot be turned into local files; the message is one line naming the file and the remedy."""


def parse_hub_name(spec: str | os.PathLike) -> tuple[str, str | None, str | None] | None:
    """(repo_id, revision, filename) when `spec` reads as a Hub name, else None.

    A spec whose first component exists here (`runs/export` while `runs/` exists) is a local path that is missing,
    never a Hub name: a typo in a local path must not turn into a network request."""
    text = os.fspath(spec)
    match = _HUB_NAME.match(text)
    if match is None or text.startswith((".", "/", "~")) or "\\" in text:
        return None
    repo = match["repo"]
    if not text.startswith("hf://") and Path(repo.split("/")[0]).exists():
        return None
    if repo.endswith((".git", ".")) or ".." in repo:
        return None
    return repo, match["revision"], match["file"]


def resolve_weights(
    spec: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    option: str | None = None,
) -> Path:
    """A local path for MedITok weights named by a path or a Hub name (see the module docstring).

    Without a file name, a repository with config.json is a release folder (its snapshot folder is returned, pickles
    excluded), one without is the published layout (`DEFAULT_FILENAME`). `option` ("--weights") goes into the
    message when the spec is neither a local path nor a Hub name."""
    local = Path(spec).expanduser()
    if local.exists():
        if filename is not None and local.is_dir():
            local = local / filename
            if not local.exists():
                raise HubError(f"{local}: no such file or directory")
        return local
    repo, revision, filename = _hub_parts(spec, filename, revision, option)
    if filename is not None:
        return _download(repo, filename, revision)
    hub = _client()
    try:
        config = Path(hub.hf_hub_download(repo, CONFIG_NAME, revision=revision))
    except hub.errors.LocalEntryNotFoundError as exc:
        # Offline or unreachable: decide from the cache alone which layout the repository has.
        has_config = hub.try_to_load_from_cache(repo, CONFIG_NAME, revision=revision)
        if has_config is hub.file_download._CACHED_NO_EXIST or isinstance(
            hub.try_to_load_from_cache(repo, DEFAULT_FILENAME, revision=revision), str
        ):
            return _download(repo, DEFAULT_FILENAME, revision)
        wanted = DEFAULT_FILENAME if repo == PUBLISHED_REPO else f"{CONFIG_NAME} + {WEIGHTS_NAME}"
        raise _explain(exc, hub, spec, repo, wanted, revision) from None
    except hub.errors.EntryNotFoundError:  # the Hub answered: no config.json, so the published .pth layout
        return _download(repo, DEFAULT_FILENAME, revision)
    except Exception as exc:  # noqa: BLE001 - the client raises many types; each becomes one line
        raise _explain(exc, hub, spec, repo, CONFIG_NAME, revision) from None
    _download(repo, WEIGHTS_NAME, revision)  # a release folder's weights, or the line naming them when absent
    return _folder(hub, spec, repo, revision, config.parent)


def resolve_folder(spec: str | os.PathLike, *, revision: str | None = None, option: str | None = None) -> Path:
    """A local model folder (a meditok-ar model: config.json, weights, tokenizer files, image_tokenizer/) named by a
    path or a Hub name; the whole snapshot, pickles excluded."""
    local = Path(spec).expanduser()
    if local.exists():
        return local
    repo, revision, filename = _hub_parts(spec, None, revision, option)
    if filename is not None:
        raise HubError(f"{spec}: a model folder is a whole repository; drop the file part ({filename})")
    hub = _client()
    try:
        Path(hub.hf_hub_download(repo, CONFIG_NAME, revision=revision))
    except Exception as exc:  # noqa: BLE001 - one line per failure kind
        raise _explain(exc, hub, spec, repo, CONFIG_NAME, revision) from None
    return _folder(hub, spec, repo, revision, None)


def _hub_parts(
    spec: str | os.PathLike, filename: str | None, revision: str | None, option: str | None
) -> tuple[str, str | None, str | None]:
    parsed = parse_hub_name(spec)
    if parsed is None:
        raise HubError(f"{spec}: no such file or directory" + (f" ({option})" if option else ""))
    repo, spec_revision, spec_file = parsed
    for name, given, in_spec in (("revision", revision, spec_revision), ("filename", filename, spec_file)):
        if given is not None and in_spec is not None and given != in_spec:
            raise HubError(f"{spec}: names {name} {in_spec!r}, but {name}={given!r} was passed too")
    return repo, revision or spec_revision, filename or spec_file


def _client():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # submodules: the package's lazy top level does not expose them
        import huggingface_hub.errors
        import huggingface_hub.file_download
    except ImportError:
        raise HubError(
            "loading from the Hugging Face Hub needs huggingface_hub: pip install 'meditok-tokenizer[hub]' "
            "(or pass a local path)"
        ) from None
    return huggingface_hub


def _download(repo: str, filename: str, revision: str | None) -> Path:
    hub = _client()
    try:
        return Path(hub.hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:  # noqa: BLE001 - one line per failure kind
        raise _explain(exc, hub, repo, repo, filename, revision) from None


def _folder(hub, spec: str | os.PathLike, repo: str, revision: str | None, known: Path | None) -> Path:
    try:
        folder = Path(hub.snapshot_download(repo, revision=revision, ignore_patterns=_FOLDER_IGNORE))
    except Exception as exc:  # noqa: BLE001
        if known is None or not isinstance(exc, hub.errors.LocalEntryNotFoundError):
            raise _explain(exc, hub, spec, repo, CONFIG_NAME, revision) from None
        folder = known  # offline with an incomplete snapshot: the files checked below say what is missing
    return folder


def _explain(exc: Exception, hub, spec, repo: str, filename: str, revision: str | None) -> HubError:
    """One line for each way a Hub look-up fails, naming the file and the local-path alternative."""
    errors = hub.errors
    at = f" at revision {revision}" if revision else ""
    local = f"pass a local path instead (e.g. --weights path/to/{filename.split(' + ')[0]})"
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        why = "HF_HUB_OFFLINE=1" if hub.constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        return HubError(
            f"{repo}: {filename}{at} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}) and {why}; "
            f"download it where the Hub is reachable (hf download {repo} {filename.split(' + ')[0]}) or {local}"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"{spec}: no such local file or directory, and no Hugging Face Hub model repository {repo} "
            f"(private or gated ones need `hf auth login`)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{repo}: no revision {revision!r} on the Hugging Face Hub")
    if isinstance(exc, errors.EntryNotFoundError):
        return HubError(f"{repo}: no file {filename}{at} in the Hugging Face Hub repository")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return HubError(f"{repo}: {filename}{at}: download failed ({type(exc).__name__}: {first}); {local}")


# ------------------------------------------------------------------------------------------------------ releases


def model_card(config: dict, repo_id: str | None = None) -> str:
    """The README.md of a release folder: Hub metadata (tags the Hub filters on) and how to load it."""
    name = repo_id or "path/to/this-folder"
    model = config.get("model", {})
    image_input = json.dumps(config.get("image_input", {}), sort_keys=True)
    return (
        "---\n"
        "tags:\n- meditok\n- medical-imaging\n- image-tokenizer\n"
        "---\n\n"
        f"# MedITok tokenizer ({model.get('name', 'custom')})\n\n"
        "A MedITok medical image tokenizer release folder (`config.json` + `model.safetensors`), written by "
        "meditok-tokenizer. It turns an image into a grid of discrete codes "
        f"({model.get('num_codebooks', 8)} sub-codebooks x {model.get('codebook_size', 4096)} codes per 16x16 "
        "patch) that decode back to the image.\n\n"
        "```python\n"
        "from meditok.tokenizer import MedITok  # pip install 'meditok-tokenizer[hub]'\n\n"
        f'tok = MedITok.from_pretrained("{name}")\n'
        'codes = tok.tokenize("scan.dcm")  # DICOM/NIfTI need meditok-data\n'
        "```\n\n"
        f"Command line: `meditok reconstruct image.png --weights {name} -o recon/`.\n\n"
        f"Image input recorded in config.json (how files become the encoder's input): `{image_input}`.\n"
    )


def release_files(folder: str | os.PathLike, repo_id: str) -> dict[str, Path | bytes]:
    """What `push_folder` uploads: {path in the repository: local file, or the generated model card's bytes}.

    The folder must be a MedITok release (config.json + model.safetensors); its own README.md is kept, else a card
    is generated. Hidden files and pickles are left out (a release is loadable without executing anything)."""
    folder = Path(folder)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise HubError(f"{folder}: a MedITok release folder needs {CONFIG_NAME} and {WEIGHTS_NAME}; missing {missing}")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HubError(f"{folder / CONFIG_NAME}: not a MedITok config ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") != "meditok":
        raise HubError(f"{folder / CONFIG_NAME}: not a MedITok config (model_type is not 'meditok')")
    files: dict[str, Path | bytes] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") for p in relative.parts) and path.suffix not in (".pth", ".pt"):
            files[relative.as_posix()] = path
    files.setdefault(MODEL_CARD_NAME, model_card(config, repo_id).encode())
    return files


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a release folder (`release_files`) to `repo_id` in one commit, creating the repository if needed.

    Returns the commit's URL. Tag the release afterwards if you want a fixed name (`HfApi().create_tag`)."""
    files = release_files(folder, repo_id)
    hub = _client()
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [
            hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            for name, src in files.items()
        ]
        info = api.create_commit(
            repo_id,
            operations,
            revision=revision,
            commit_message=commit_message or f"MedITok release from {Path(folder).name}",
        )
    except Exception as exc:  # noqa: BLE001 - offline, no token, no permission: one line each
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, (hub.errors.OfflineModeIsEnabled, ConnectionError)) or hub.constants.HF_HUB_OFFLINE:
            first = "the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network)"
        raise HubError(f"{repo_id}: upload of {folder} failed: {first}") from None
    return str(getattr(info, "commit_url", info))


__all__ = [
    "DEFAULT_FILENAME",
    "HubError",
    "PUBLISHED_REPO",
    "model_card",
    "parse_hub_name",
    "push_folder",
    "release_files",
    "resolve_folder",
    "resolve_weights",
]
