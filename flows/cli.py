"""The ``dpo-pipeline`` command: the whole lifecycle, or one stage alone, as a Prefect flow tracked in
MLflow, from a shell.

Each command's options come from its flow's own parameters, so the command line, the Prefect UI's
form and ``prefect.yaml`` presets take the same settings: a plain parameter is ``--name VALUE``;
each field of a stage config is ``--config.field VALUE`` (nested: ``--feedback.sampling.num_samples
8``). A value is read as JSON when it parses (numbers, ``true``, ``null``, ``["a", "b"]``), else as
text, and the config checks it as the form would.

    dpo-pipeline lifecycle --model ./my-model --data.source chats.jsonl --feedback.judge rubric:openai:...
    dpo-pipeline sft --dataset <run id or folder> --feedback <run id or folder> --sft.epochs 2
    dpo-pipeline evaluate-model --model ./my-model --prompts heldout.jsonl --evaluation.judge openai:...

One command is no flow: ``dpo-pipeline runs reconcile [--stale-after SECONDS] [--dry-run]`` ends the
MLflow runs (and Prefect flow runs) that killed flows left RUNNING; every flow also does it when it starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib
import inspect
import json
import os
import re
import socket
import sys

from tasks.plumbing import reconcile

COMMANDS = {  # command -> the flow it runs
    "lifecycle": "flows.lifecycle:lifecycle",
    "iterative": "flows.iterative:iterative",
    "build-dataset": "flows.build_dataset:build_dataset_flow",
    "collect-feedback": "flows.collect_feedback:collect_feedback_flow",
    "sft": "flows.sft:sft_flow",
    "dpo": "flows.dpo:dpo_flow",
    "evaluate": "flows.evaluate:evaluate_flow",
    "evaluate-model": "flows.evaluate:evaluate_model_flow",
}


def load_flow(command: str):
    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpo-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        flow = load_flow(command)
        doc = inspect.getdoc(flow.fn) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        sub = commands.add_parser(command, help=summary, description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_flow_options(sub, flow)
    _add_runs_commands(commands)
    return parser


def _add_runs_commands(commands) -> None:
    """``runs ACTION``: housekeeping of the pipeline's MLflow runs, outside any flow."""
    runs = commands.add_parser("runs", help="Housekeeping of the pipeline's MLflow runs (no flow).")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    doc = inspect.getdoc(reconcile)
    sub = actions.add_parser("reconcile", help=doc.splitlines()[0], description=doc,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--stale-after", dest="stale_after_s", type=float, default=reconcile.STALE_AFTER_S,
                     metavar="SECONDS", help="End runs whose heartbeat is older than this (default: %(default)s).")
    sub.add_argument("--dry-run", action="store_true", help="Print the runs that would end; change nothing.")


def _add_flow_options(parser: argparse.ArgumentParser, flow) -> None:
    """One option per plain parameter, one per config field (recursively), help from the docs."""
    args_help = _args_section(inspect.getdoc(flow.fn) or "")
    for name, param in inspect.signature(flow.fn).parameters.items():
        default = param.default
        if dataclasses.is_dataclass(default):
            group = parser.add_argument_group(f"--{name}.FIELD", args_help.get(name, ""))
            _add_config_options(group, name, default)
            continue
        required = default is inspect.Parameter.empty
        parser.add_argument(f"--{name}", dest=name, required=required, metavar="VALUE",
                            type=_value, default=argparse.SUPPRESS,
                            help=args_help.get(name, "") + ("" if required else f" (default: {default})"))


def _add_config_options(group, prefix: str, config) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _add_config_options(group, f"{prefix}.{field.name}", value)
            continue
        info = type(config).__pydantic_fields__[field.name]
        group.add_argument(f"--{prefix}.{field.name}", dest=f"{prefix}.{field.name}", metavar="VALUE", type=_value,
                           default=argparse.SUPPRESS,  # argparse formats help with %: a literal one is %%
                           help=f"{info.description or ''} (default: {json.dumps(value)})".replace("%", "%%"))


def _args_section(doc: str) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` section."""
    section = doc.partition("Args:")[2]
    return {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^\s*(\w+): (.*(?:\n\s{8,}.*)*)", section, re.M)}


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def flow_arguments(flow, options: dict) -> dict:
    """The flow's keyword arguments: plain options as given, config fields set on the flow's defaults."""
    kwargs: dict = {}
    for name, param in inspect.signature(flow.fn).parameters.items():
        if dataclasses.is_dataclass(param.default):
            fields = {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(f"{name}.")}
            if fields:
                kwargs[name] = _with_fields(param.default, fields)
        elif name in options:
            kwargs[name] = options[name]
    return kwargs


def _with_fields(config, fields: dict):
    """A copy of ``config`` with dotted ``fields`` set; the config's own checks run on the result."""
    values = dataclasses.asdict(config)
    for dotted, value in fields.items():
        *path, last = dotted.split(".")
        node = values
        for key in path:
            node = node[key]
        node[last] = value
    return type(config)(**values)


def reconcile_command(stale_after_s: float, dry_run: bool) -> None:
    """One line per run ended (with ``dry_run``: that would end), then how many."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no USER variable
        user = f"uid{os.getuid()}"
    ended = reconcile.reconcile_runs(by=f"cli:{user}@{socket.gethostname()}", stale_after_s=stale_after_s,
                                     dry_run=dry_run)
    for run in ended:
        print(f"{run.run_id}  {run.run_name}  flow run {run.flow_run_id}  {run.status}  {run.reason}")
    print(f"{len(ended)} runs {'would be ended (dry run)' if dry_run else 'ended'}")


def main(argv: list[str] | None = None) -> None:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "runs":  # its one action so far: reconcile
        reconcile_command(args["stale_after_s"], args["dry_run"])
        return
    flow = load_flow(command)
    try:
        kwargs = flow_arguments(flow, args)
    except ValueError as exc:  # a config check: say which setting, not a traceback
        sys.exit(f"dpo-pipeline {command}: {exc}")
    result = flow(**kwargs)
    if command in ("lifecycle", "iterative"):
        from flows.report import print_report

        print_report(*result)
        return
    if command == "evaluate-model":
        from flows.report import print_scores

        print_scores(result)
    parts = result if isinstance(result, tuple) else (result,)
    print(json.dumps([part.model_dump() for part in parts], indent=2))


if __name__ == "__main__":
    main()
