"""``--user NAME [--group NAME]``: bind as root, then serve as someone else.

Every listening socket (and the metrics endpoint's) is bound first; then the Maildir is
given to the user, and the process gives up root for good: supplementary groups
(``setgroups``, the user's groups, or only ``--group``), then ``setgid``, then
``setuid``, in that order, since each step needs the privilege the next one drops.
Workers are started by the dropped supervisor, so they never were root.

Running as root past that point is refused unless ``--user root`` says it is meant.
Without root, ``--user`` may only name the user we already are.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from ..maildir import Maildir
from .configure import ConfigError
from .logs import log_event
from .stores.sqlite import INDEX_NAME

__all__ = ["Identity", "become", "check_not_root", "drop", "give_maildir", "resolve",
           "summary"]

_MAILDIR_DIRECTORIES = ("", "tmp", "new", "cur", "meta")
_INDEX_SUFFIXES = ("", "-wal", "-shm")  # the database and its write-ahead log


@dataclass(frozen=True)
class Identity:
    """Who to become: a user, its group and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def drops(self) -> bool:
        """True if becoming it means giving up root now."""
        return os.geteuid() == 0 and self.uid != 0


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The ``--user``/``--group`` identity (None without ``--user``), checked now."""
    if user is None:
        if group is not None:
            raise ConfigError("--group needs --user")
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user}: no such user") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"--group {group}: no such group") from None
    groups = (gid,) if group is not None else tuple(os.getgrouplist(user, gid))
    identity = Identity(user, entry.pw_uid, gid, groups)
    if os.geteuid() != 0 and (identity.uid != os.geteuid()
                              or (group is not None and gid != os.getegid())):
        raise ConfigError(f"--user {user}: only root can become another user "
                          f"(running as uid {os.geteuid()})")
    return identity


def check_not_root(identity: Identity | None) -> None:
    """Refuse to go on as root unless ``--user root`` was given."""
    if os.geteuid() == 0 and identity is None:
        raise ConfigError("refusing to run as root: give --user NAME to serve as that "
                          "user once the ports are bound (or --user root to insist), or "
                          "let systemd pass the sockets")


def become(identity: Identity | None, maildir: Maildir | None) -> None:
    """Once every socket is bound: give the Maildir away, drop root, check the rest."""
    if identity is not None and identity.drops:
        if maildir is not None:
            give_maildir(identity, maildir.path)
        drop(identity)
        if maildir is not None:
            try:
                maildir.create()  # (its write probe, as the user now)
            except OSError as exc:
                raise ConfigError(f"--user {identity.name} cannot use maildir "
                                  f"{maildir.path}: {exc}") from None
        log_event("privileges", user=identity.name, uid=os.getuid(), gid=os.getgid(),
                  groups=os.getgroups())
    check_not_root(identity)


def give_maildir(identity: Identity, path: Path) -> None:
    """Make the Maildir's directories the user's (its messages are then created so),
    and the SQLite index beside them if an earlier run as root left one."""
    for sub in _MAILDIR_DIRECTORIES:
        directory = path / sub
        if directory.is_dir():
            os.chown(directory, identity.uid, identity.gid)
    for suffix in _INDEX_SUFFIXES:
        index = path / f"{INDEX_NAME}{suffix}"
        if index.is_file():
            os.chown(index, identity.uid, identity.gid)


def drop(identity: Identity) -> None:
    """Become ``identity`` for good: groups, group, user, in that order."""
    if not identity.drops:
        return
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # (a kernel that let us back: never go on like that)
        raise SystemExit("trio-smtpd: could not give up root")
    _check_runnable(identity)


def _check_runnable(identity: Identity) -> None:
    """What this process and its workers will still load must be readable now."""
    import trio_smtpd

    needed = [(sys.executable, os.X_OK), (os.path.dirname(os.__file__), os.R_OK | os.X_OK),
              (os.path.dirname(trio_smtpd.__file__), os.R_OK | os.X_OK)]
    for path, mode in needed:
        if not os.access(path, mode):
            raise ConfigError(f"--user {identity.name} cannot read or run {path} (Python "
                              "and trio_smtpd must be installed where that user can)")


def summary(identity: Identity | None) -> str:
    """For logs and --check."""
    if identity is None:
        return f"uid {os.geteuid()} (no --user)"
    return (f"{identity.name} (uid {identity.uid}, gid {identity.gid}, groups "
            f"{','.join(map(str, identity.groups))})")
