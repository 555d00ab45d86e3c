"""The champion decision of ``lungseg register`` survives a kill, by construction (a write-ahead record).

A decision is three writes to the registry: the alias move (``champion`` / ``challenger``), the decision
tags on the version and its model card. A ``SIGKILL`` between them used to leave the champion with
empty or old decision tags, and the next ``register`` then recorded "already champion (repeated run)":
what it had been compared against, both numbers and the reason were lost. So, under the registry lock:

1. the decision is made, and **before any alias is touched** it is written whole — the alias move it
   implies, the decision tags, the model card, the decision record — as the registered model's tag
   :data:`PENDING_TAG` (:meth:`Journal.before_move`);
2. the aliases are moved (:func:`move_aliases`), the tags and the card are written, and only then is the
   pending record deleted (:meth:`Journal.complete`);
3. every ``register`` first looks for a pending record (:func:`finish_pending`), under the same lock and
   before its own decision. When the champion is where the record left it — the champion it was decided
   against (killed before the move) or the one it decided (killed after) — it **finishes** it: the same
   alias moves (each one idempotent), the same tags and card; otherwise (the champion was moved by hand
   since) it discards it. Either way it says so in one warning line, never silently.

A kill before step 1 leaves nothing pending and the aliases and every version's tags untouched (the
version itself may exist, undecided: registering the evaluation again decides it). A repeated ``register``
of the champion's own evaluation keeps the comparison that promoted it (:func:`settle`) instead of
recording one against itself.

A lock whose holder was killed on this machine is taken over at once (:func:`holder_gone`), not after
:data:`lungseg.registry.LOCK_STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lungseg.errors import LungsegError

log = logging.getLogger(__name__)

TAG = "lungseg."
#: seconds after which a registry lock whose holder vanished is taken over (at once when it was killed here)
LOCK_STALE_AFTER_S = 120.0
LOCK_TIMEOUT_S = 300.0
#: the registered model's tag holding a decision written ahead of its alias move (JSON, see :class:`Journal`)
PENDING_TAG = TAG + "pending_decision"
REPEATED = "already champion (repeated run)"


class RegistryError(LungsegError):
    """The registry could not record the version or the decision."""


# ------------------------------------------------------------------------------------------- the lock
def is_code(exc: Exception, *codes: str) -> bool:
    return getattr(exc, "error_code", None) in codes


def _pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return "unknown"


def lock_holder(token: str) -> str:
    """``host:pid:token:pid-namespace`` — who holds the registry lock (see :func:`holder_gone`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{token}:{_pid_namespace()}"


def holder_gone(holder: str | None) -> bool:
    """Whether the lock ``holder`` (:func:`lock_holder`) is a process of this machine and PID namespace
    that no longer exists (killed): its lock can be taken over at once. Another machine, container or an
    unknown namespace is never judged gone (the lock then goes stale after ``LOCK_STALE_AFTER_S``)."""
    parts = (holder or "").split(":")
    if len(parts) < 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    namespace = ":".join(parts[3:])
    if namespace == "unknown" or namespace != _pid_namespace():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


@contextlib.contextmanager
def registry_lock(client, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Mutual exclusion across processes and machines that share the tracking server.

    Creating a registered model is atomic on the server (its name is unique), so the lock is the
    registered model ``<name>.lock``: created to acquire, deleted to release. A lock older than
    :data:`LOCK_STALE_AFTER_S` (holder crashed), or whose holder was killed on this machine
    (:func:`holder_gone`), is taken over.
    """
    from mlflow.exceptions import MlflowException

    lock = f"{name}.lock"
    holder = lock_holder(uuid.uuid4().hex[:8])
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": holder, "since": str(time.time())},
                description="lungseg registration lock (transient; safe to delete if stale)",
            )
            break
        except MlflowException as exc:
            if not is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        with contextlib.suppress(MlflowException):
            current = client.get_registered_model(lock)
            since = float((current.tags or {}).get("since", "0") or 0)
            if (since and time.time() - since > LOCK_STALE_AFTER_S) or holder_gone((current.tags or {}).get("holder")):
                client.delete_registered_model(lock)  # stale, or its holder was killed on this machine
                continue
        if time.monotonic() > deadline:
            raise RegistryError(f"could not acquire the registry lock {lock!r} within {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            current = client.get_registered_model(lock)
            if (current.tags or {}).get("holder") == holder:
                client.delete_registered_model(lock)


# ---------------------------------------------------------------------------------------- the aliases
def _at(client, name: str, alias: str) -> str | None:
    from lungseg.registry import _alias_version

    mv = _alias_version(client, name, alias)
    return None if mv is None else str(mv.version)


def move_aliases(client, name: str, aliases: tuple[str, str], move: dict[str, Any]) -> bool:
    """Move the aliases as the decision ``move`` says (``version``, ``promote``, ``champion_version`` —
    the champion it was decided against — and ``alias``); each step is skipped when already done, so a
    move interrupted anywhere can be made again. False when ``alias`` does not point at ``version``
    afterwards (someone moved it meanwhile)."""
    champion_alias, challenger_alias = aliases
    version, promote = move["version"], move["promote"]
    if not promote and move["champion_version"] == version and _at(client, name, champion_alias) == version:
        client.delete_registered_model_alias(name, champion_alias)  # demoted: never champion and refused
    if _at(client, name, move["alias"]) != version:
        client.set_registered_model_alias(name, move["alias"], version)
    if _at(client, name, move["alias"]) != version:
        return False
    if promote and _at(client, name, challenger_alias) == version:
        client.delete_registered_model_alias(name, challenger_alias)  # a promoted challenger is no longer one
    return True


def champion_after(move: dict[str, Any]) -> str | None:
    """Where the champion alias points once ``move`` is done."""
    if move["promote"]:
        return move["version"]
    return None if move["champion_version"] == move["version"] else move["champion_version"]


# --------------------------------------------------------------------------------------- the decision
#: the version's tags that record its decision (:func:`decision_tags`)
DECISION_TAGS = tuple(
    TAG + k
    for k in (
        "decision",
        "decision_reason",
        "candidate_value",
        "champion_before_value",
        "champion_before_version",
        "below_min_metric",
        "decided_at",
    )
)


def decision_tags(decision, below_min_metric: bool, decided_at: str) -> dict[str, str]:
    """The decision, both numbers and when, as the version's tags (:data:`DECISION_TAGS`)."""
    before = decision.champion_before
    values = (
        decision.decision,
        decision.reason,
        repr(decision.candidate),
        "none" if before is None else repr(before),
        decision.champion_before_version or "none",
        str(below_min_metric).lower(),
        decided_at,
    )
    return dict(zip(DECISION_TAGS, values, strict=True))


def settle(decision, tags: dict[str, str], below_min_metric: bool, decided_at: str, card: Callable):
    """``(decision, version tags, model card)`` to record for ``decision`` of the version whose tags are
    ``tags`` now; ``card(decision, tags)`` writes the card. A repeated run of the champion's own evaluation
    (reason :data:`REPEATED`) keeps the comparison that promoted it — the recorded tags stay as they are and
    the decision reports them — instead of recording one against itself; when the version records no such
    decision (a kill by an older lungseg, an alias set by hand, another ``register.metric``) one warning
    line says that comparison is not known."""
    recorded = {k: tags[k] for k in DECISION_TAGS if k in tags}
    if decision.reason == REPEATED:
        promoted = recorded.get(TAG + "decision") == "champion" and recorded.get(TAG + "decision_reason")
        if promoted and recorded.get(TAG + "candidate_value") == repr(decision.candidate):
            reason = recorded[TAG + "decision_reason"]
            before = recorded.get(TAG + "champion_before_value", "none")
            before_version = recorded.get(TAG + "champion_before_version", "none")
            decision = dataclasses.replace(
                decision,
                champion_before=None if before == "none" else float(before),
                champion_before_version=None if before_version == "none" else before_version,
                reason=reason
                if reason.startswith(REPEATED)
                else f"{REPEATED}; promoted {recorded.get(TAG + 'decided_at', 'earlier')}: {reason}",
            )
            return decision, recorded, card(decision, tags)
        log.warning(
            "%s v%s is champion but records no decision that promoted it on %s (a `lungseg register` killed by "
            "an older lungseg, an alias set by hand, or another register.metric): recorded as a repeated run, "
            "the comparison that promoted it is not known",
            decision.model_name,
            decision.version,
            decision.metric,
        )
    version_tags = decision_tags(decision, below_min_metric, decided_at)
    return decision, version_tags, card(decision, {**tags, **version_tags})


# ----------------------------------------------------------------------------------- the pending record
@dataclass
class Journal:
    """One ``register``'s decision of ``version``, written ahead of its alias move.

    ``build(outcome, decided_at, version's tags now)`` returns ``(decision, version tags, model card)``
    for the alias outcome (:class:`lungseg.registry._Outcome`) — called under the lock, before any alias
    moves (:func:`settle`)."""

    name: str
    version: str
    aliases: tuple[str, str]
    build: Callable[[Any, str, dict[str, str]], tuple[Any, dict[str, str], str]]
    decision: Any = None
    record: dict[str, Any] = field(default_factory=dict)

    def before_move(self, client, outcome) -> None:
        """Write the whole decision as the pending record before the aliases move."""
        decided_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        now = dict(client.get_model_version(self.name, self.version).tags or {})  # after finish_pending
        self.decision, tags, card = self.build(outcome, decided_at, now)
        self.record = {
            "move": {
                "version": self.version,
                "promote": bool(outcome.promote),
                "champion_version": outcome.champion_version,
                "alias": outcome.alias,
            },
            "aliases": list(self.aliases),
            "decided_at": decided_at,
            "tags": tags,
            "card": card,
            "describe": self.decision.describe(),
        }
        client.set_registered_model_tag(self.name, PENDING_TAG, json.dumps(self.record))

    def complete(self, client) -> None:
        """After the aliases moved: the tags, the card, then the pending record deleted."""
        _record(client, self.name, self.record)

    def abandon(self, client) -> None:
        """The aliases could not be moved (the champion kept moving): nothing of this decision stands."""
        with contextlib.suppress(Exception):
            if read_pending(client, self.name) == self.record:
                client.delete_registered_model_tag(self.name, PENDING_TAG)


def _record(client, name: str, record: dict[str, Any]) -> None:
    version = record["move"]["version"]
    for key, value in record["tags"].items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=record["card"])
    client.delete_registered_model_tag(name, PENDING_TAG)


def read_pending(client, name: str) -> dict[str, Any] | None:
    """The pending record of ``name`` (None: no decision was interrupted)."""
    raw = (client.get_registered_model(name).tags or {}).get(PENDING_TAG)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        record["move"]["version"], record["tags"], record["card"]  # noqa: B018 (shape check)
    except (ValueError, TypeError, KeyError) as exc:
        raise RegistryError(
            f"{name}: the registered model's tag {PENDING_TAG} is not a pending decision lungseg wrote ({exc}); "
            "delete the tag and register again"
        ) from exc
    return record


def finish_pending(client, name: str) -> str | None:
    """Finish (or, when the champion was moved by hand since, discard) the decision an interrupted
    ``register`` left pending on ``name``; returns the warning line it logged (None: nothing pending).
    Call it under the registry lock, before deciding anything."""
    from mlflow.exceptions import MlflowException

    record = read_pending(client, name)
    if record is None:
        return None
    move, version = record["move"], record["move"]["version"]
    aliases = tuple(record.get("aliases") or ("champion", "challenger"))
    champion_now = _at(client, name, aliases[0])
    what = (
        f"{name} v{version}: a `lungseg register` interrupted at {record.get('decided_at')} left its decision pending"
    )
    try:
        client.get_model_version(name, version)
        exists = True
    except MlflowException:
        exists = False
    if not exists or champion_now not in {move["champion_version"], champion_after(move)}:
        client.delete_registered_model_tag(name, PENDING_TAG)
        why = "the version is gone" if not exists else f"the champion is now v{champion_now} (moved by hand since)"
        line = f"{what}; discarded, {why}: register that evaluation again to decide it"
    else:
        if not move_aliases(client, name, aliases, move):
            raise RegistryError(f"{what}; its aliases could not be set: run again")
        _record(client, name, record)
        line = f"{what}; finished it: {record.get('describe')}"
    log.warning(line)
    return line
