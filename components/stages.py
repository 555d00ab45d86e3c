"""The four stages as lightweight components. Each: typed artifacts in/out, the stage's own
``params.yaml`` section as a JSON-string parameter (JSON, not a KFP ``dict``: KFP carries dicts
as protobuf Structs, which turn every integer into a float that the typed config rightly rejects) (so KFP caching, like DVC, re-runs a stage only
when its section or its inputs change), one library call, and a one-line ``error: ...`` + exit 2
for user errors (the same contract as the CLI).

The components are made for :data:`components.image.IMAGE`; :func:`for_image` makes the same four
for another image (``lungseg pipeline compile --image``, ``run-local --runner docker``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(dataset: str, raw: Input[Dataset], preprocess_params: str, processed: Output[Dataset]):
    """Raw CT data → the canonical processed folder (``lungseg.data.preprocess.preprocess``).
    An ``s3://`` input that the runner did not download is read with boto3 (``components.inputs``)."""
    import json
    import sys

    from components.inputs import local_folder
    from lungseg.config import params_from_dict
    from lungseg.data.preprocess import preprocess
    from lungseg.errors import LungsegError

    try:
        params = params_from_dict({"preprocess": json.loads(preprocess_params)}, "pipeline parameters")
        with local_folder(raw.uri, raw.path) as raw_dir:
            summary = preprocess(dataset, raw_dir, processed.path, params.preprocess)
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    processed.metadata["dataset"] = dataset
    print(summary.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(data: Input[Dataset], train_params: str, mlflow_params: str, model: Output[Model],
             metrics: Output[Metrics]):  # fmt: skip
    """Train on the processed set (``lungseg.training.train``), tracked in MLflow."""
    import json
    import math
    import sys
    from pathlib import Path

    from lungseg.config import params_from_dict
    from lungseg.errors import LungsegError
    from lungseg.training import train

    try:
        params = params_from_dict({"train": json.loads(train_params), "mlflow": json.loads(mlflow_params)}, "pipeline parameters")
        result = train(params, data_dir=data.path, output_dir=model.path)
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    out = Path(model.path)
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))  # KFP metrics cannot hold NaN (e.g. undefined HD)
    # the artifact must exist as a file too: KFP's local cache treats a missing one as a miss
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    run = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    model.metadata.update({"model": params.train.model, "mlflow_run_id": run.get("run_id"),
                           "model_uri": run.get("model_uri")})  # fmt: skip
    print(result.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(model: Input[Model], data: Input[Dataset], evaluate_params: str, mlflow_params: str,
                report: Output[dsl.Artifact], metrics: Output[Metrics]):  # fmt: skip
    """Per-image metrics, summary and figures (``lungseg.evaluation.evaluate``)."""
    import json
    import math
    import sys
    from pathlib import Path

    from lungseg.config import params_from_dict
    from lungseg.errors import LungsegError
    from lungseg.evaluation import evaluate

    try:
        params = params_from_dict({"evaluate": json.loads(evaluate_params), "mlflow": json.loads(mlflow_params)}, "pipeline parameters")
        result = evaluate(params, model_dir=model.path, data_dir=data.path, output_dir=report.path)
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    summary = json.loads((Path(report.path) / "metrics.json").read_text(encoding="utf-8"))
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))  # KFP metrics cannot hold NaN (e.g. undefined HD)
    # the artifact must exist as a file too: KFP's local cache treats a missing one as a miss
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(result.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(model: Input[Model], report: Input[dsl.Artifact], register_params: str, mlflow_params: str,
                decision: Output[dsl.Artifact]) -> str:  # fmt: skip
    """Register the version; ``champion`` moves only if it is better (``lungseg.registry.register``).
    Returns the decision (``champion`` or ``challenger``)."""
    import json
    import sys

    from lungseg.config import params_from_dict
    from lungseg.errors import LungsegError
    from lungseg.registry import register

    try:
        params = params_from_dict({"register": json.loads(register_params), "mlflow": json.loads(mlflow_params)}, "pipeline parameters")
        result = register(params, model_dir=model.path, evaluation_dir=report.path, output=decision.path)
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    decision.metadata.update({"version": result.version, "decision": result.decision, "alias": result.alias})
    print(result.describe())
    return result.decision


STAGES = {"preprocess_op": preprocess_op, "train_op": train_op, "evaluate_op": evaluate_op, "register_op": register_op}


def for_image(image: str) -> dict[str, PythonComponent]:
    """The four components (same names, same code) running in ``image`` instead of :data:`IMAGE`."""
    if image == IMAGE:
        return dict(STAGES)
    return {name: dsl.component(comp.python_func, base_image=image, install_kfp_package=False)
            for name, comp in STAGES.items()}  # fmt: skip
