"""What a command uses when a path is left out: the current folder as the checkpoint, and an output folder beside
the parent (never inside it) named after the parent and the budget."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CONFIG_FILE, Checkpoint, is_plain_file_name
from .destination import parent_folders
from .errors import InputError

#: the suffix of the default output folder of several budgets, which holds one subfolder per budget
SEVERAL_BUDGETS = "budgets"


def current_folder(argument: str) -> Path:
    """The current folder, when it holds a checkpoint or model folder (a config.json); `argument` names what the
    user left out, for the message."""
    folder = Path.cwd()
    if not (folder / CONFIG_FILE).is_file():
        raise InputError(
            f"give {argument}, or run this from inside a checkpoint folder: the current folder {folder} has no "
            f"{CONFIG_FILE}."
        )
    return folder


def output_folder(parent: Checkpoint, suffix: str) -> Path:
    """`<parent>-<suffix>` beside a local parent folder, or in the current folder for a parent named by Hub repo id.

    It is never inside the parent: a local parent inside a Hugging Face cache (whose cache folder counts as the
    parent) gets its output in the current folder instead, and when that is inside the parent too, the user is
    asked for --out."""
    if parent.hub is not None:
        stem, beside = parent.hub.repo_id.rpartition("/")[2], Path.cwd()
    else:
        root = parent.root.resolve()
        stem, beside = root.name, root.parent
    name = f"{stem}-{suffix}"
    if not stem or not is_plain_file_name(name):
        raise InputError(f"no default output folder can be named after {stem!r} and {suffix!r}; give --out DIR.")
    protected = [folder.path for folder in parent_folders(parent)]
    for candidate in (beside / name, Path.cwd() / name):
        if not any(candidate.is_relative_to(folder) for folder in protected):
            return candidate
    raise InputError(f"the default output folder {name} would be inside the parent checkpoint here; give --out DIR.")
