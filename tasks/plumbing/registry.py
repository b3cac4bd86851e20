"""The MLflow model registry as the pipeline uses it: a registered model whose versions carry the
aliases ``challenger`` (latest DPO model), ``champion`` (serving) and ``previous-champion``
(for rollback). By hand:

    python -m tasks.plumbing.registry status   [--model dpo-policy]
    python -m tasks.plumbing.registry promote  --version 3 [--model dpo-policy]
    python -m tasks.plumbing.registry rollback [--model dpo-policy]
"""

from __future__ import annotations

import argparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.plumbing.settings import tracking_uri

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def alias_version(name: str, alias: str):
    """The model version holding ``alias``, or None."""
    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_challenger(name: str, model_uri: str, run_id: str) -> str:
    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="DPO policies; aliases: challenger, champion")
    # a logged model (models:/m-...) must be named by id too: a tracking server refuses the bare URI
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)


def promote(name: str, version: str, reason: str) -> None:
    """Make ``version`` the champion; the former champion becomes ``previous-champion``."""
    client = _client()
    current = alias_version(name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        return
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion_reason", reason[:5000])


def rollback(name: str) -> str:
    """Give ``champion`` back to ``previous-champion``; return the version now serving."""
    previous = alias_version(name, PREVIOUS)
    if previous is None:
        raise SystemExit(f"{name} has no {PREVIOUS} to roll back to")
    current = alias_version(name, CHAMPION)
    client = _client()
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_model_version_tag(name, previous.version, "promotion_reason", "manual rollback")
    return str(previous.version)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.plumbing.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["status", "promote", "rollback"])
    parser.add_argument("--model", default="dpo-policy")
    parser.add_argument("--version")
    args = parser.parse_args(argv)
    if args.action == "promote":
        if not args.version:
            parser.error("promote needs --version")
        promote(args.model, args.version, "manual promotion")
    elif args.action == "rollback":
        rollback(args.model)
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        v = alias_version(args.model, alias)
        print(f"{alias:>18}: {'-' if v is None else 'version ' + str(v.version)}")


if __name__ == "__main__":
    main()
