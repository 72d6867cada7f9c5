"""Find a meta-trained optimizer from a reference: a local path, a DVC-tracked path, or W&B.

``lopt evaluate --checkpoint REF`` accepts

- a local ``meta_params.npz`` or a directory holding one (e.g. ``results/default/meta``);
- a path that DVC tracks but that is not in the workspace yet: it is fetched with
  ``dvc pull``, from the default remote and, when that fails (a fresh clone has no lab
  store), from each other remote of ``.dvc/config`` in turn (``release``: the shipped
  default experiment);
- ``wandb:<entity>/<project>/<name>:<version>``: a W&B artifact logged by meta-training,
  downloaded into ``cache_dir`` (needs network access and a W&B key).

The result is always a local ``meta_params.npz`` whose ``.json`` sits next to it, ready
for :func:`lopt.optimizers.load_pretrained` (which verifies the sha256).

:func:`pull` (``lopt pull``) fetches whole DVC stages the same way and gives the pulled
files one modification time (:func:`restamp`), so Snakemake plans nothing for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

WANDB_PREFIX = "wandb:"
FILE_NAME = "meta_params.npz"


def _in_dir(path: Path) -> Path:
    return path / FILE_NAME if path.is_dir() else path


def resolve_checkpoint(ref: str | Path, cache_dir: str | Path = ".lopt-cache") -> Path:
    """The local ``meta_params.npz`` that ``ref`` names (see the module docstring).

    Raises:
        FileNotFoundError: nothing at ``ref`` locally, DVC does not track it (or the pull
            failed), and it is not a W&B reference; the message lists the accepted forms.
    """
    text = str(ref)
    if text.startswith(WANDB_PREFIX):
        from lopt.tracking import download_artifact

        name = text[len(WANDB_PREFIX) :]
        dest = Path(cache_dir) / "wandb" / name.replace("/", "_").replace(":", "_")
        try:
            found = _find_npz(download_artifact(name, dest))
        except RuntimeError as exc:  # no network / no key: say so, no traceback
            raise FileNotFoundError(str(exc)) from None
        if found is None:
            raise FileNotFoundError(f"W&B artifact {name!r} holds no {FILE_NAME}")
        return found
    path = Path(text)
    if _in_dir(path).exists():
        return _in_dir(path)
    pulled = _dvc_pull(path)
    if pulled is not None and _in_dir(pulled).exists():
        return _in_dir(pulled)
    raise FileNotFoundError(
        f"{ref}: no such checkpoint. Accepted: a local {FILE_NAME} or a directory holding one, "
        f"a DVC-tracked path (fetched with `dvc pull`), or {WANDB_PREFIX}<entity>/<project>/<name>:<version>"
    )


def _find_npz(root: Path) -> Path | None:
    hits = sorted(Path(root).rglob(FILE_NAME))
    return hits[0] if hits else None


def remotes(repo_root: str | Path = ".") -> list[str]:
    """The DVC remotes of ``repo_root`` to try in order: the default one, then the others.

    A fresh clone usually cannot reach the lab's default remote (a shared store on
    another machine) but can read the repository's own ``release`` remote, so readers
    fall back along this list instead of failing on the first remote.
    """
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return _remote_order(repo.config)


def _remote_order(config) -> list[str]:
    names = list(config.get("remote", {}))
    default = config.get("core", {}).get("remote")
    return ([default] if default in names else []) + [n for n in names if n != default]


def _in_turn(names: list[str | None], who: str) -> Iterator[str | None]:
    """The remotes in order; asking for the next one says on stderr that the last one failed."""
    for i, name in enumerate(names):
        if i:
            print(f"{who}: remote {names[i - 1]!r} failed; trying remote {name!r}", file=sys.stderr)
        yield name


def _dvc_pull(path: Path) -> Path | None:
    """``dvc pull`` the DVC output that contains ``path``; None when DVC does not track it.

    Tries the remotes of :func:`remotes` in order and stops at the first that has it.
    """
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError:
        return None
    try:
        repo = Repo(str(Path.cwd()))
    except DvcException:
        return None  # not inside a DVC repository
    failures = []
    with repo:
        target = path.resolve()
        outs = [o for o in repo.index.outs if target.is_relative_to(Path(o.fs_path))]
        if not outs:
            return None
        roots = [Path(o.fs_path) for o in outs]
        for remote in _in_turn(_remote_order(repo.config) or [None], "lopt"):
            try:
                repo.pull(targets=[str(r) for r in roots], remote=remote)
            except DvcException as exc:
                failures.append(f"remote {remote!r}: {exc}")
                continue
            restamp(roots)  # see restamp: keeps Snakemake from re-running
            return path
    raise FileNotFoundError(f"{path}: tracked by DVC but `dvc pull` failed from every remote: " + "; ".join(failures))


def restamp(roots: list[Path], when: float | None = None) -> int:
    """Give every file under ``roots`` one modification time; return how many.

    ``dvc pull`` writes files in parallel, so their times say nothing about which stage
    made them, and Snakemake (which always compares an input's time with its outputs')
    would re-run jobs whose inputs happen to be a millisecond newer. One shared time makes
    the pulled outputs a consistent set; files written later by jobs are newer again.

    The shared time defaults to the newest of the files' own times, not to now: a pull
    that fetched nothing (everything up to date) then leaves the files no newer than the
    outputs a run has since made from them, and Snakemake plans nothing downstream.
    """
    files = []
    for root in roots:
        files += [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    if when is None:
        when = max((p.stat().st_mtime for p in files), default=0.0)
    for path in files:
        os.utime(path, (when, when))
    return len(files)


def pull(targets: list[str], remote: str | None = None, force: bool = False) -> int:
    """``dvc pull [-r REMOTE] [--force] TARGETS`` (every stage when none), then :func:`restamp` them.

    ``remote`` names a remote of ``.dvc/config``; without one, the remotes of
    :func:`remotes` are tried in order until one pull succeeds (the repository's
    ``release`` remote holds the released default experiment: README, DVC). DVC's output
    of an attempt another remote may still rescue is held back: shown if it succeeds, and
    after the last attempt if every remote fails, so a fallback that works prints no error.
    ``force`` lets DVC overwrite workspace files that differ from the pulled ones.
    """
    names = [remote] if remote else remotes() or [None]
    failed: list[tuple[str | None, str]] = []
    for i, name in enumerate(names):
        cmd = [sys.executable, "-m", "dvc", "pull", *(["--remote", name] if name else []),
               *(["--force"] if force else []), *targets]
        if i == len(names) - 1:  # the last chance: DVC's progress and errors as they come
            rc = subprocess.run(cmd, check=False).returncode
        else:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            rc = proc.returncode
            if rc == 0:
                sys.stdout.write(proc.stdout)
                sys.stderr.write(proc.stderr)
            else:
                failed.append((name, proc.stdout + proc.stderr))
                print(f"lopt pull: remote {name!r} failed; trying remote {names[i + 1]!r}", file=sys.stderr)
        if rc == 0:
            break
    if rc:
        for name, output in failed:
            print(f"lopt pull: remote {name!r} had failed with:\n{output.rstrip()}", file=sys.stderr)
        return rc
    from dvc.repo import Repo

    with Repo(".") as repo:
        if targets:
            pairs = [pair for t in targets for pair in repo.stage.collect_granular(t)]
        else:
            pairs = [(stage, None) for stage in repo.index.stages]
        roots = []
        for stage, path in pairs:
            roots += [Path(path)] if path else [Path(out.fs_path) for out in stage.outs]
    n = restamp([r for r in dict.fromkeys(roots) if r.exists()])
    print(f"lopt pull: {n} pulled files share one modification time")
    return 0
