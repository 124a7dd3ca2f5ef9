"""The ``raft`` command line.

raft validate spec.yaml [key=value ...]      check a spec (schema, paths, columns)
raft train spec.yaml [key=value ...]         fine-tune on Ray and export the model
raft eval MODEL_DIR --data FILE              score an exported model
raft list                                    task families × techniques
"""

from __future__ import annotations

import json
import sys
import time

import click

from raft import registry
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
    from raft.train import RunError, preflight

    spec = _load(spec_file, overrides)
    try:
        spec = preflight(spec)
    except (DataError, RunError) as error:
        _fail(str(error))
    click.echo(
        f"{spec_file}: valid · {spec.task.type} · {spec.technique.type} · "
        f"{spec.scaling.num_workers} workers · ZeRO {spec.deepspeed.zero_stage}"
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
    try:
        outcome = fit(spec, address=address, verbose=verbose)
    except (DataError, ClusterError, RunError) as error:
        _fail(str(error))
    except TrainingFailed as error:
        _fail(str(error), code=1)
    summary = outcome.summary
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


@main.command("spec-reference")
def spec_reference() -> None:
    """Print every spec section and field with its default and meaning (markdown)."""
    from raft.spec import reference_markdown

    click.echo(reference_markdown())


@main.command("list")
def list_matrix() -> None:
    """Print which techniques each task family supports."""
    techniques = sorted(registry.techniques())
    rows = []
    for name, task in sorted(registry.tasks().items()):
        cells = []
        for technique in techniques:
            reason = registry.unsupported_reason(technique, task)
            cells.append("yes" if reason is None else f"no ({reason})")
        rows.append((name, cells))
    width = max(len(name) for name, _ in rows) + 2
    click.echo("family".ljust(width) + "".join(t.ljust(16) for t in techniques))
    for name, cells in rows:
        click.echo(name.ljust(width) + "".join(c.ljust(16) for c in cells))


if __name__ == "__main__":
    main()
