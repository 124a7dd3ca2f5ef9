"""The ``raft`` command line.

raft validate spec.yaml [key=value ...]      check a spec (schema, paths, columns)
raft train spec.yaml [key=value ...]         fine-tune on Ray and export the model
raft tune spec.yaml [key=value ...]          search hyperparameters (the spec's tune: section)
raft tune --resume RUN_DIR                   continue an interrupted search
raft eval MODEL_DIR --data FILE              score an exported model
raft list                                    task families × techniques
raft submit spec.yaml --address http://HEAD:8265   run it as a Ray job on a cluster (--tune: the search)
raft status JOB_ID / raft stop JOB_ID        follow up on a submitted job
raft doctor [--address ADDR]                 nodes, resources, versions, shared storage
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from raft import registry
from raft.resources import workers_text
from raft.spec import SpecError, load_spec

# Bad input exits 2 with one message; a run that fails in training exits 1.
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.secho(f"raft: {message}", fg="red", err=True)
    sys.exit(code)


def _load(spec_file: str, overrides: tuple[str, ...]):
    try:
        return load_spec(spec_file, list(overrides))
    except SpecError as error:
        _fail(f"invalid spec: {error}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raft")
def main() -> None:
    """raft: fine-tune pretrained Transformers on a Ray cluster from one YAML spec."""


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(spec_file: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC_FILE (with key=value OVERRIDES) without running anything."""
    from raft.sources import DataError
    from raft.train import RunError, finished_model, preflight

    spec = _load(spec_file, overrides)
    try:
        spec = preflight(spec)
    except (DataError, RunError) as error:
        _fail(str(error))
    done = finished_model(spec)
    if done is not None:
        click.echo(
            f"[raft] run {spec.run_name!r} already finished (its model is at {done}): raft train will not train it again"
        )
    search = ""
    if spec.tune is not None:
        search = (
            f" · search over {', '.join(spec.tune.space)}: {spec.tune.population} trials "
            f"({spec.tune.concurrency} at once), {spec.tune.scheduler.type}, {spec.tune.search.type}"
        )
    click.echo(
        f"{spec_file}: valid · {spec.task.type} · {spec.technique.type} · "
        f"{workers_text(spec)} workers · ZeRO {spec.deepspeed.zero_stage}{search}"
    )


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local one).")
@click.option("--verbose", is_flag=True, help="Show Ray's and Ray Data's own progress output.")
def train(spec_file: str, overrides: tuple[str, ...], address: str | None, verbose: bool) -> None:
    """Fine-tune as SPEC_FILE says, e.g. raft train spec.yaml train.lr=3e-4 scaling.num_workers=4."""
    from raft.cluster import ClusterError
    from raft.sources import DataError
    from raft.train import RunError, TrainingFailed, fit

    spec = _load(spec_file, overrides)
    if spec.tune is not None:
        click.echo(
            "[raft] the spec's tune: section is not used by raft train (one run, base values); raft tune searches"
        )
    try:
        outcome = fit(spec, address=address, verbose=verbose)
    except (DataError, ClusterError, RunError) as error:
        _fail(str(error))
    except TrainingFailed as error:
        _fail(str(error), code=1)
    summary = outcome.summary
    if summary.get("already_finished"):
        return
    metric = summary["primary_metric"]
    click.echo("")
    click.secho(f"[raft] finished run {summary['run']}", bold=True)
    if summary["before"] is not None:
        click.echo(f"[raft] {metric}: {summary['before']:.4f} before → {summary['after']:.4f} after training")
    click.echo(
        f"[raft] wall time: {summary['wall_seconds']:.1f} s "
        f"(training loop {summary['train_seconds'] or 0:.1f} s)"
    )
    click.echo(f"[raft] model saved to {outcome.model_dir}")


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", "resume_dir", help="Continue the search in this run folder (finished trials stay).")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local one).")
@click.option("--verbose", is_flag=True, help="Show Ray Tune's and Ray's own progress output.")
def tune(
    spec_file: str | None,
    overrides: tuple[str, ...],
    resume_dir: str | None,
    address: str | None,
    verbose: bool,
) -> None:
    """Search hyperparameters as SPEC_FILE's tune: section says; export the best trial to best/."""
    from raft.cluster import ClusterError
    from raft.sources import DataError
    from raft.train import RunError, TrainingFailed
    from raft.tune import resume_search, run_search

    if bool(spec_file) == bool(resume_dir):
        _fail("give a spec file to start a search, or --resume RUN_DIR to continue one (not both)")
    try:
        if resume_dir:
            if overrides:
                _fail("--resume continues the search as it was specified; overrides are not taken")
            outcome = resume_search(resume_dir, address=address, verbose=verbose)
        else:
            outcome = run_search(_load(spec_file, overrides), address=address, verbose=verbose)
    except (DataError, ClusterError, RunError) as error:
        _fail(str(error))
    except TrainingFailed as error:
        _fail(str(error), code=1)
    click.echo("")
    click.secho(
        f"[raft] search finished: {len(outcome.leaderboard)} trials in {outcome.wall_seconds:.0f} s",
        bold=True,
    )
    click.echo(f"[raft] leaderboard: {outcome.run_dir}/leaderboard.csv, plots in {outcome.run_dir}/plots")
    if outcome.best_dir is None:
        _fail("no trial produced a checkpoint; nothing was exported", code=1)
    click.echo(f"[raft] best model: {outcome.best_dir}/model")


@main.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, help="File (or folder/URI) of labelled rows.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_dir: str, data_path: str, batch_size: int, as_json: bool) -> None:
    """Score the exported model in MODEL_DIR on labelled data."""
    from raft.evaluate import EvalError, evaluate_model
    from raft.sources import DataError

    started = time.perf_counter()
    try:
        metrics = evaluate_model(model_dir, data_path, batch_size=batch_size)
    except (EvalError, DataError) as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    click.echo(f"({time.perf_counter() - started:.1f} s)")


@main.command("report")
@click.argument("run_dir")
@click.option("--out", help="Where to write the HTML (default: RUN_DIR/report.html).")
def report_command(run_dir: str, out: str | None) -> None:
    """A self-contained HTML report of the run or search in RUN_DIR: loss, metrics, learning
    rate and throughput curves, a confusion matrix for classifiers; for a search every
    trial's curve, hyperparameters against the metric, and the leaderboard."""
    from raft.report import ReportError, write_report

    try:
        written = write_report(run_dir, out)
    except (ReportError, OSError) as error:
        _fail(str(error))
    click.echo(f"[raft] report: {written}")


@main.command("plan")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option(
    "--address", help="Compare with the workers of this Ray cluster (default: this machine's free memory)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimates as JSON.")
def plan_command(spec_file: str, overrides: tuple[str, ...], address: str | None, as_json: bool) -> None:
    """Per-worker memory of SPEC_FILE's model under each ZeRO stage and offload option,
    against what each worker has, and the fastest setting that fits."""
    from raft import plan
    from raft.train import RunError, check_model_path, resolve_paths

    spec = _load(spec_file, overrides)
    try:
        spec = resolve_paths(spec)
        check_model_path(spec)
        facts = plan.counted_facts(spec)
    except (RunError, ValueError, OSError) as error:
        _fail(str(error))
    if address:
        from raft.cluster import ClusterError, joined, worker_budget

        try:
            with joined(address):
                budget = worker_budget(spec)
        except (ClusterError, ValueError) as error:
            _fail(str(error))
    else:
        budget = plan.local_budget(spec)
    shape = plan.run_shape(spec, facts)
    estimates = plan.plan(facts, budget=budget, **shape)
    best = plan.recommend(estimates)
    asked = plan.setting_of(spec)
    if as_json:
        click.echo(json.dumps(plan.as_dict(facts, shape, budget, estimates, best, asked)))
        return
    click.echo(
        f"model: {facts.params:,} parameters, {facts.trainable:,} trainable ({spec.technique.type}); "
        f"{shape['world_size']} workers, batch {shape['batch']} × {shape['seq_len']} tokens, {shape['precision']}, "
        f"{'GPU' if shape['use_gpu'] else 'CPU'}"
    )
    each = f"GPU {plan.gib(budget.accelerator)}, " if shape["use_gpu"] else ""
    click.echo(f"each worker has: {each}host {plan.gib(budget.host)} ({budget.where})")
    click.echo("")
    for line in plan.table(estimates, asked):
        click.echo(line)
    click.echo("")
    if best is None:
        click.echo(
            "nothing fits: add workers (ZeRO 3 divides the model states by them), cut train.batch_size, or train LoRA"
        )
    else:
        note = "" if best.setting == asked else f" (the spec asks for {asked.label})"
        click.echo(f"recommended: {best.setting.label}, the fastest setting that fits{note}")


_ADDRESS_HELP = "The cluster's Jobs API (dashboard), e.g. http://HEAD:8265."
_TOKEN_HELP = "Ray auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."


def _jobs_client(address: str, token: str | None):
    from raft import jobs
    from raft.cluster import ClusterError
    from raft.submission import SubmissionError

    try:
        return jobs.connect(address, token)
    except (ClusterError, SubmissionError) as error:
        _fail(str(error))


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--address", envvar="RAY_JOBS_ADDRESS", required=True, help=_ADDRESS_HELP)
@click.option("--working-dir", default=".", show_default=True, help="Folder uploaded with the job.")
@click.option(
    "--runtime-env",
    "runtime_env_file",
    default="jobs/runtime_env.yaml",
    show_default=True,
    help="Runtime env YAML (as ray job submit --runtime-env takes); '' for none.",
)
@click.option("--token", envvar="RAY_AUTH_TOKEN", help=_TOKEN_HELP)
@click.option("--wait/--no-wait", default=True, help="Tail the job's logs and exit with its exit code.")
@click.option("--tune", "as_search", is_flag=True, help="Run the spec's tune: search (raft tune) as the job.")
def submit(
    spec_file: str,
    overrides: tuple[str, ...],
    address: str,
    working_dir: str,
    runtime_env_file: str,
    token: str | None,
    wait: bool,
    as_search: bool,
) -> None:
    """Run SPEC_FILE as a Ray job on the cluster at --address (raft train, or raft tune
    with --tune, remotely)."""
    from raft import jobs, submission
    from raft.cluster import ClusterError

    spec = _load(spec_file, overrides)  # a bad spec never leaves this machine
    if as_search and spec.tune is None:
        _fail(f"{spec_file} has no tune: section to search")
    concurrent = spec.tune.concurrency if as_search else 1
    try:
        inside = submission.relative_spec_path(spec_file, working_dir)
        env = submission.runtime_env(runtime_env_file or None, working_dir)
    except submission.SubmissionError as error:
        _fail(str(error))
    client = _jobs_client(address, token)
    try:
        jobs.check_resources(client, spec, concurrent)
        job_id = jobs.submit(client, spec, inside, list(overrides), env, "tune" if as_search else "train")
    except ClusterError as error:
        _fail(str(error))
    click.echo(f"[raft] submitted job {job_id}")
    if not wait:
        click.echo(f"[raft] follow it with: raft status {job_id} --address {address}")
        return
    final = jobs.follow(client, job_id)
    click.echo(f"[raft] job {job_id} {final.status}" + (f": {final.message}" if final.message else ""))
    sys.exit(final.exit_code)


@main.command()
@click.argument("job_id")
@click.option("--address", envvar="RAY_JOBS_ADDRESS", required=True, help=_ADDRESS_HELP)
@click.option("--token", envvar="RAY_AUTH_TOKEN", help=_TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(job_id: str, address: str, token: str | None, as_json: bool) -> None:
    """Print the state of a submitted job."""
    from dataclasses import asdict

    from raft import jobs
    from raft.cluster import ClusterError

    client = _jobs_client(address, token)
    try:
        state = jobs.state(client, job_id)
    except ClusterError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(asdict(state)))
    else:
        click.echo(f"{state.job_id}: {state.status}" + (f" ({state.message})" if state.message else ""))


@main.command()
@click.argument("job_id")
@click.option("--address", envvar="RAY_JOBS_ADDRESS", required=True, help=_ADDRESS_HELP)
@click.option("--token", envvar="RAY_AUTH_TOKEN", help=_TOKEN_HELP)
def stop(job_id: str, address: str, token: str | None) -> None:
    """Stop a submitted job."""
    from raft import jobs
    from raft.cluster import ClusterError

    client = _jobs_client(address, token)
    try:
        stopped = jobs.stop(client, job_id)
    except ClusterError as error:
        _fail(str(error))
    click.echo(f"{job_id}: {'stop requested' if stopped else 'already finished'}")


@main.command()
@click.option(
    "--address", envvar="RAY_ADDRESS", help="Cluster to inspect (GCS address, e.g. HEAD:6379 or auto)."
)
@click.option("--storage", help="A path or URI to check every node can see (e.g. your output.dir).")
def doctor(address: str | None, storage: str | None) -> None:
    """Print the cluster's nodes, resources and versions; warn about what would break a run."""
    import ray

    from raft import nodes
    from raft.cluster import probe_nodes, use_token_if_available
    from raft.storage import normalize

    use_token_if_available()
    try:
        ray.init(address=address or "auto", logging_level="WARNING")
    except Exception as error:
        _fail(f"cannot connect to a Ray cluster at {address or 'auto'}: {str(error).splitlines()[0]}")
    try:
        location = normalize(storage) if storage else None
        reports = probe_nodes(location)
    finally:
        ray.shutdown()
    click.echo(nodes.format_nodes(reports))
    problems = nodes.version_warnings(reports) + (
        nodes.storage_problems(reports, location) if location else []
    )
    for problem in problems:
        click.secho(f"warning: {problem}", fg="yellow")
    if not problems:
        click.echo(f"{len(reports)} node(s), versions agree" + (f", {location} shared" if location else ""))
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--best", "search_dir", help="Serve the winner of this raft tune run folder (its best/model).")
@click.option(
    "--build", "build_file", help="Write a Serve config YAML here (for Ray's serve run/deploy) and exit."
)
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local one).")
@click.option(
    "--name",
    default="raft",
    show_default=True,
    help="Serve application name: give each model its own (and its own serve.route_prefix) to serve several.",
)
@click.option("--verbose", is_flag=True, help="Show Ray Serve's and the replicas' own log lines.")
def serve(
    model_dir: str | None,
    overrides: tuple[str, ...],
    search_dir: str | None,
    build_file: str | None,
    address: str | None,
    name: str,
    verbose: bool,
) -> None:
    """Serve an exported model over HTTP with Ray Serve (serve.key=value overrides)."""
    import yaml

    from raft import serving, storage
    from raft.spec import apply_overrides, validate

    if search_dir:
        if model_dir:
            _fail("give MODEL_DIR or --best RUN_DIR, not both")
        model_dir = storage.join(search_dir, "best", "model")
    if not model_dir:
        _fail("give the model folder to serve (a run's model/), or --best RUN_DIR for a search's winner")
    stray = [o for o in overrides if not o.startswith("serve.")]
    if stray:
        _fail(f"raft serve takes serve.key=value overrides only; got {', '.join(stray)}")
    from raft.serve import ServeError, check_servable, start, status_line

    try:
        spec = check_servable(model_dir)
        document = spec.model_dump(mode="json")
        document["serve"] = document.get("serve") or {}  # the export's settings, or the defaults
        spec = validate(apply_overrides(document, list(overrides)), source=model_dir)
    except (ServeError, SpecError) as error:
        _fail(str(error))
    section = spec.serve or serving.ServeSection()
    if section.adapters_dir:  # a path relative to here, for replicas that start elsewhere
        section = section.model_copy(update={"adapters_dir": str(Path(section.adapters_dir).resolve())})
    try:
        check_servable(model_dir, section)
    except ServeError as error:
        _fail(str(error))
    if build_file:
        config = serving.serve_config(section, str(Path(model_dir).resolve()), name)
        Path(build_file).write_text(yaml.safe_dump(config, sort_keys=False))
        click.echo(f"{build_file}: run it with: serve run {build_file}   (or serve deploy on a cluster)")
        return
    click.echo(f"[raft serve] deploying {spec.task.type} model from {model_dir} …")
    try:
        url = start(model_dir, section, address, name=name, verbose=verbose)
    except ServeError as error:
        _fail(str(error))
    click.echo(f"[raft serve] {spec.task.type} model from {model_dir} at {url}")
    served_name = spec.output.name or Path(model_dir).resolve().parent.name
    click.echo(f"  {serving.example_request(spec.task.type, url, served_name)}")
    click.echo("  Ctrl-C stops it.")
    try:
        shown = None
        while True:  # the application's state whenever it changes (replicas, autoscaling, restarts)
            line = status_line(name)
            if line != shown:
                click.echo(f"[raft serve] {time.strftime('%H:%M:%S')} {line}")
                shown = line
            time.sleep(2)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()


@main.command("spec-reference")
def spec_reference() -> None:
    """Print every spec section and field with its default and meaning (markdown)."""
    from raft.spec import reference_markdown

    click.echo(reference_markdown())


@main.command("list")
def list_matrix() -> None:
    """Print which techniques each task family supports, and why not where not."""
    techniques = sorted(registry.techniques())
    rows, notes = [], []
    for name, task in sorted(registry.tasks().items()):
        cells = []
        for technique in techniques:
            reason = registry.unsupported_reason(technique, task)
            if reason is None:
                cells.append("yes")
            else:
                notes.append(f"[{len(notes) + 1}] {name} × {technique}: {reason}")
                cells.append(f"no [{len(notes)}]")
        rows.append((name, cells))
    width = max(len(name) for name, _ in rows) + 2
    widths = [max(len(t), 6) + 2 for t in techniques]
    click.echo(
        (
            "family".ljust(width) + "".join(t.ljust(w) for t, w in zip(techniques, widths, strict=True))
        ).rstrip()
    )
    for name, cells in rows:
        click.echo(
            name.ljust(width) + "".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        )
    if notes:
        click.echo("")
        for note in notes:
            click.echo(note)


if __name__ == "__main__":
    main()
