"""Whether a candidate's number may be compared with the champion's, by construction (review of #20).

A version's number is only meaningful with what it measures: the promotion metric's key, the task (the
label names the model segments), the model's dataset, the evaluation split and the evaluation set's
fingerprint (``metrics.json`` ``data_fingerprint``, the sha256 over the split's manifest rows). Every
version records them as tags (:func:`identity_tags`); the champion comparison reads them back and compares
two numbers **only when every one of them is recorded on both sides and equal** (:func:`differences`).

* **Another task** (other label names: a 3-class ggo/consolidation model under the name of a binary
  infection model) is not a version of the same model — whoever loads ``models:/NAME@champion`` would
  get another output — so ``lungseg register`` refuses it before anything is registered
  (:func:`task_refusal`), naming the champion and both label sets;
* another metric key, dataset, split or evaluation set → the candidate is registered as **challenger**
  with ``reason`` naming what differs, and the champion's number is not reported beside it (it is no
  comparison); a champion registered by an older lungseg that does not record one of them is never
  compared either (register its evaluation again: the reused version gets the tags).
"""

from __future__ import annotations

import json
from typing import Any

TAG = "lungseg."
#: what a version's number means: (what, tag), in the order the reason names them
IDENTITY = (
    ("metric", TAG + "metric"),
    ("labels", TAG + "label_names"),
    ("dataset", TAG + "dataset"),
    ("split", TAG + "eval_split"),
    ("evaluation set", TAG + "eval_fingerprint"),
)
UNRECORDED = {"", "none", "None", "unknown", "not recorded"}


def label_names(preprocess: dict[str, Any] | None, identity: dict[str, Any] | None) -> str:
    """The label names a model segments (its checkpoint's ``preprocess.label_names``, background first),
    as a tag value: ``background,infection``; ``<n> labels (names not recorded)`` from ``num_labels`` or
    the network's ``num_classes`` (1 output = 2 labels) when the names are not recorded."""
    pre = dict(preprocess or {})
    names = pre.get("label_names")
    if names:
        return ",".join(str(n) for n in names)
    n = pre.get("num_labels")
    if n is None:
        classes = ((identity or {}).get("kwargs") or {}).get("num_classes")
        n = None if classes is None else (2 if int(classes) == 1 else int(classes))
    return "not recorded" if n is None else f"{int(n)} labels (names not recorded)"


def identity_tags(metric: str, labels: str, dataset: str | None, split: Any, fingerprint: str | None) -> dict[str, str]:
    """The version's tags of :data:`IDENTITY`."""
    values = (metric, labels, dataset or "not recorded", str(split), fingerprint or "unknown")
    return {tag: value for (_what, tag), value in zip(IDENTITY, values, strict=True)}


def _short(value: str) -> str:
    return value[:19] + "…" if value.startswith(("sha256:", "ids-sha256:")) and len(value) > 23 else value


def differences(champion_tags: dict[str, str], candidate: dict[str, str]) -> list[str]:
    """What keeps the champion's number (``champion_tags``) from being compared with the candidate's
    (:func:`identity_tags`), each ``what champion-value vs candidate-value`` or ``what not recorded``;
    empty: like for like."""
    out = []
    for what, tag in IDENTITY:
        mine, theirs = candidate.get(tag, "not recorded"), champion_tags.get(tag, "not recorded")
        if theirs in UNRECORDED or mine in UNRECORDED:
            side = "champion" if theirs in UNRECORDED else "candidate"
            out.append(f"{what} not recorded by the {side}")
        elif mine != theirs:
            out.append(f"{what} {_short(theirs)} vs {_short(mine)}")
    return out


def task_refusal(name: str, champion, candidate: dict[str, str], run_id: str) -> str | None:
    """The one-line refusal when the candidate segments other labels than ``name``'s champion (None:
    the same labels, or the champion does not record them, or there is no champion)."""
    if champion is None:
        return None
    tag = TAG + "label_names"
    theirs, mine = (champion.tags or {}).get(tag, "not recorded"), candidate[tag]
    if theirs in UNRECORDED or mine in UNRECORDED or theirs == mine:
        return None
    unlike = "; ".join(differences(champion.tags or {}, candidate))
    return (
        f"segments other labels than {name}'s champion (champion v{champion.version} vs candidate run {run_id}: "
        f"{unlike}): another task is not a version of this model and its number cannot be compared; nothing "
        f"registered — register it under another register.model_name (e.g. {json.dumps(name + '-' + _slug(candidate))})"
    )


def _slug(candidate: dict[str, str]) -> str:
    dataset = candidate.get(TAG + "dataset", "")
    if dataset and dataset not in UNRECORDED:
        return dataset
    return "other-task"
