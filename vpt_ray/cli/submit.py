"""``vpt-ray submit SPEC``: run a stage as a Ray job through the Jobs API (local head or `ray up` cluster)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

HELP = (
    "Submit an RL fine-tuning job for a task spec (or any --command) to a Ray cluster through the Jobs API. "
    "The spec is the job's whole configuration: edit it rather than passing arguments."
)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# The spec travels with the job under this name, in a working_dir of its own.
SHIPPED_TASK = "task.yaml"
DEFAULT_COMMAND = "vpt-ray rl --task {task}"
# Environment variables whose values are secrets by their name.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.IGNORECASE)
SECRET_ADVICE = (
    "a job's runtime_env and entrypoint are readable by every client of the Jobs API (`vpt-ray jobs --json`, "
    "the dashboard) and kept with the job: keep secrets in a file on the cluster that the job reads instead "
    "(the cluster's jobs already have VPT_LEDGER; for another ledger, --env VPT_LEDGER_FILE=PATH names a file "
    "holding its URL; cluster/README.md)"
)


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help=f"Jobs API address: $RAY_ADDRESS if it is an http(s) URL, else {DEFAULT_ADDRESS} (what "
        "`ray dashboard cluster/vpt.yaml` forwards, and a local `ray start --head`'s dashboard)",
    )


def resolve_address(address: str | None) -> str:
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def job_client(address: str | None):
    """A JobSubmissionClient, or SystemExit with a message saying how to reach the cluster."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from vpt_ray.ledger import redact_url
    from vpt_ray.ray_session import TOKEN_SOURCES

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise SystemExit(
            f"vpt-ray: the Ray Jobs API at {redact_url(url)} refused this client: it needs the cluster's token in "
            f"{TOKEN_SOURCES}, and RAY_AUTH_MODE=token or unset (cluster/README.md: the token)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SystemExit(
            f"vpt-ray: cannot reach the Ray Jobs API at {redact_url(url)}: {redact_url(str(e))}\n"
            "  a cluster: keep `ray dashboard cluster/vpt.yaml` running (it forwards 127.0.0.1:8265)\n"
            "  locally:   `ray start --head` (the dashboard serves the Jobs API)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", metavar="SPEC", help="task spec (rollouts/*.yaml) to run")
    parser.add_argument("--init", metavar="CHECKPOINT", help="checkpoint to start from (a path on the cluster)")
    parser.add_argument(
        "--command",
        default=None,
        help=f"entrypoint to run instead of `{DEFAULT_COMMAND}` (any stage or program); `{{task}}` in it "
        "becomes the shipped spec's path",
    )
    parser.add_argument("--job-id", help="submission id (default: <spec name>-<UTC time>); also given to the "
                        "job as $VPT_RUN_ID, the run's id in the ledger")
    parser.add_argument("--working-dir", type=Path, help="upload this directory as the job's working dir "
                        "(default: only the spec is uploaded; code comes from the cluster's images/sync)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable "
                        "for the job (repeatable)")
    parser.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver")
    parser.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver (e.g. 1 to run "
                        "the driver on the learner node)")
    parser.add_argument("--entrypoint-resources", type=json.loads, metavar="JSON",
                        help='custom resources for the driver, e.g. \'{"learner": 1}\'')
    parser.add_argument("--follow", action="store_true", help="stream the job's log until it ends; exit "
                        "status 0 only if it succeeded")
    parser.add_argument("--dry-run", action="store_true", help="print the request as JSON, submit nothing")
    add_address_argument(parser)


def build_request(args: argparse.Namespace, staging: Path) -> dict:
    """The JobSubmissionClient.submit_job keyword arguments; refuses bad input (and secrets, which the Jobs API
    would show to anyone who lists jobs) before anything is sent."""
    from vpt_ray.ledger import redact_url

    if args.spec is None and args.command is None:
        raise SystemExit("vpt-ray submit: give a task SPEC, or a --command to run")
    env_vars = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SystemExit(f"vpt-ray submit: --env {redact_url(item)!r}: expected KEY=VALUE")
        if redact_url(value) != value or SECRET_NAME.search(key):
            what = "a URL with a password" if redact_url(value) != value else "a secret (by its name)"
            raise SystemExit(f"vpt-ray submit: --env {key}: its value is {what}; {SECRET_ADVICE}")
        env_vars[key] = value
    if args.command is not None and redact_url(args.command) != args.command:
        raise SystemExit(f"vpt-ray submit: --command {redact_url(args.command)!r} holds a URL with a password; "
                         f"{SECRET_ADVICE}")  # fmt: skip
    runtime_env: dict = {}
    command = args.command or DEFAULT_COMMAND
    name = "job"
    if args.spec is not None:
        spec_path = Path(args.spec)
        from vpt_ray.config import ConfigError
        from vpt_ray.spec import load_task

        try:
            name = load_task(spec_path).name  # refuse a bad spec here, not minutes later on the cluster
        except ConfigError as e:
            raise SystemExit(f"vpt-ray submit: {e}") from None
        if args.working_dir is not None:
            task_arg = os.path.relpath(spec_path.resolve(), args.working_dir.resolve())
            if task_arg.startswith(".."):
                raise SystemExit(f"vpt-ray submit: {spec_path} is not inside --working-dir {args.working_dir}")
        else:
            staging.mkdir(parents=True, exist_ok=True)
            (staging / SHIPPED_TASK).write_bytes(spec_path.read_bytes())
            task_arg = SHIPPED_TASK
    elif "{task}" in command:
        raise SystemExit("vpt-ray submit: --command uses {task} but no SPEC was given")
    if args.working_dir is not None:
        if not args.working_dir.is_dir():
            raise SystemExit(f"vpt-ray submit: --working-dir {args.working_dir}: not a directory")
        runtime_env["working_dir"] = str(args.working_dir)
        runtime_env["excludes"] = [".git", ".venv", "runs", "demo_runs", "**/__pycache__"]
    elif args.spec is not None:
        runtime_env["working_dir"] = str(staging)
    if args.spec is not None:
        command = command.replace("{task}", shlex.quote(task_arg))
    if args.command is None and args.init:
        command += f" --init {shlex.quote(args.init)}"
    elif args.init:
        raise SystemExit("vpt-ray submit: --init goes with the default RL entrypoint; put it in --command")
    job_id = args.job_id or f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", job_id):
        raise SystemExit(f"vpt-ray submit: job id {job_id!r}: use letters, digits, '.', '_' and '-'")
    env_vars.setdefault("VPT_RUN_ID", job_id)
    runtime_env["env_vars"] = env_vars
    request = {"entrypoint": command, "submission_id": job_id, "runtime_env": runtime_env,
               "metadata": {"vpt_ray": "1", **({"spec": str(args.spec)} if args.spec else {})}}
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_resources"):
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    return request


def run(args: argparse.Namespace) -> int:
    import tempfile

    from vpt_ray.ledger import redact_url

    with tempfile.TemporaryDirectory(prefix="vpt-submit-") as tmp:
        request = build_request(args, Path(tmp) / "job")
        if args.dry_run:
            print(json.dumps({**request, "address": redact_url(resolve_address(args.address))}, indent=2))
            return 0
        client = job_client(args.address)
        try:
            job_id = client.submit_job(**request)
        except RuntimeError as e:
            print(f"vpt-ray submit: the cluster refused the job: {e}", file=sys.stderr)
            return 1
    print(f"submitted {job_id}: {request['entrypoint']}")
    if not args.follow:
        print(f"  follow it: vpt-ray logs {job_id} --follow    progress: vpt-ray status {job_id}")
        return 0
    from vpt_ray.cli.logs import follow

    return follow(client, job_id)
