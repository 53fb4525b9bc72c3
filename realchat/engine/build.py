"""The build engine: plan the graph, skip what is done, run the rest in order, record and publish.

For every step it runs, the engine owns what all steps share once the payload is written: the step's
``stats.json``, ``manifest.json`` (lineage over all its parents), ``recipe.yaml`` (the whole recipe,
so the artifact says how to rebuild it), the card, the atomic rename into place, removing the step's
work folder, and publishing. A step kind only writes its payload (:mod:`realchat.steps.base`).
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from realchat import __version__
from realchat.engine import ranks
from realchat.engine.context import StepContext
from realchat.engine.fingerprint import fingerprint, input_identities, input_parts
from realchat.engine.graph import Graph, Node, build_graph
from realchat.engine.lock import run_lock
from realchat.engine.outputs import (
    MANIFEST,
    RECIPE_COPY,
    STATS,
    atomic_output,
    is_done,
    read_manifest,
    read_stats,
    recipe_dir,
    step_dir,
)
from realchat.errors import RecipeError
from realchat.models.chat_formats import check_chat_templates
from realchat.files import atomic_write_text, write_json
from realchat.recipe.refs import FileData, HubData
from realchat.recipe.schema import LoadedRecipe
from realchat.steps import registry


@dataclass
class StepPlan:
    name: str
    kind: str
    parents: list[str]
    output: Path
    fingerprint: str
    done: bool
    node: Node
    #: Each input's identity by its key (a parent's fingerprint, or a file's content digest), and the
    #: kind's own extra inputs: computed once for the fingerprint, reused for the lineage.
    identities: dict[str, Any] = field(default_factory=dict)
    external: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "parents": self.parents, "fingerprint": self.fingerprint,
                "done": self.done, "output": str(self.output)}


def graph_of(loaded: LoadedRecipe, only: list[str] | None = None, start: str | None = None,
             check: bool = True) -> Graph:
    """The recipe's graph, every reference checked, and each kind's own checks passed for the steps
    ``--only`` / ``--from`` select (every step by default, as ``plan`` promises the whole recipe
    builds): a ``build --only curate`` does not need evaluate's benchmark files. ``check=False``
    (publishing finished steps): the references only."""
    graph = build_graph(loaded)
    if not check:
        return graph
    for name in selected_names(graph, only, start):
        node = graph.nodes[name]
        try:
            registry.get(node.kind).check(node.config, loaded.base_dir)
            check_chat_templates(node.config, loaded.base_dir, set(loaded.recipe.steps))
        except RecipeError as e:
            e.file, e.field = str(loaded.path), f"steps.{name}.{e.field}" if e.field else f"steps.{name}"
            raise
    return graph


def plan(loaded: LoadedRecipe, graph: Graph | None = None) -> list[StepPlan]:
    """Every step in build order with its fingerprint and whether a matching output exists."""
    graph = graph or graph_of(loaded)
    fps: dict[str, str] = {}
    plans = []
    for name in graph.order:
        node = graph.nodes[name]
        external = registry.get(node.kind).external_inputs(node.config, loaded.base_dir)
        identities = input_identities(node, fps, loaded.base_dir)
        # budgets (max_cost, …) bound the work without changing it: raising one resumes the same work folder
        unhashed = set(getattr(node.config, "not_fingerprinted", ()))
        fp = fingerprint(node.kind, node.config.model_dump(mode="json", exclude=unhashed),
                         input_parts(identities, external))
        fps[name] = fp
        out = step_dir(loaded.run_root, loaded.name, name)
        plans.append(StepPlan(name, node.kind, node.parents, out, fp, is_done(out, fp), node, identities, external))
    return plans


def select(plans: list[StepPlan], graph: Graph, only: list[str] | None = None,
           start: str | None = None) -> list[StepPlan]:
    """``--only`` these steps; ``--from`` this step and everything downstream of it."""
    keep = set(selected_names(graph, only, start))
    return [p for p in plans if p.name in keep]


def selected_names(graph: Graph, only: list[str] | None = None, start: str | None = None) -> list[str]:
    """The steps ``--only`` / ``--from`` select, in build order (an unknown name: one line)."""
    names = list(graph.order)
    for flag, values in (("--only", only or []), ("--from", [start] if start else [])):
        for value in values:
            if value not in names:
                raise RecipeError(f"{flag} {value!r}: no such step in the recipe (steps: {', '.join(names)})")
    keep = set(names)
    if only:
        keep &= set(only)
    if start:
        keep &= set(graph.downstream(start))
    return [n for n in names if n in keep]


def check_launch(loaded: LoadedRecipe, to_run: list[StepPlan]) -> None:
    """Every step about to run against how the build was launched (a multi-GPU training key in a
    one-process run), before the first one starts: no hour of curation or paid summaries before the
    error."""
    for p in to_run:
        try:
            registry.get(p.kind).check_launch(p.node.config, ranks.world_size(), loaded.path)
        except RecipeError as e:
            e.file, e.field = str(loaded.path), f"steps.{p.name}.{e.field}" if e.field else f"steps.{p.name}"
            ranks.share(None)  # the other ranks of a launch stop too
            raise


def fresh_start(loaded: LoadedRecipe, chosen: list[StepPlan], force: bool) -> None:
    """Before a build: Hub requests get timeouts (a Hub source, model or publish never waits for
    ever), and with ``--force`` the chosen steps' work folders go, so they start clean (no checkpoint
    or part file of an earlier try is resumed)."""
    from realchat.engine.outputs import work_dir
    from realchat.hub.http import install_timeouts

    install_timeouts()
    if force:
        for p in chosen:
            shutil.rmtree(work_dir(loaded.run_root, loaded.name, p.name, p.fingerprint), ignore_errors=True)


# -- one step ---------------------------------------------------------------------------------------


def lineage(p: StepPlan, base_dir: Path = Path(".")) -> list[dict[str, Any]]:
    """The step's parents for its manifest and card: every input, a step by its fingerprint, anything
    else by what was really used (:mod:`realchat.models.provenance`: a local file by its name, digest and
    format; a Hub id by the commit it resolved to). A kind's own extra inputs (curate's source) come first."""
    from realchat.models import upstream_dataset, upstream_repo
    from realchat.models.provenance import input_record

    parents: list[dict[str, Any]] = [external_record(x, base_dir) for x in p.external]
    for e in p.node.inputs:
        ident = p.identities[e.key]
        if e.step:
            parents.append({"key": e.key, "role": e.role, "step": e.step, "fingerprint": ident["step_fingerprint"],
                            "split": getattr(e.data, "split", None)})
            continue
        if isinstance(e.data, HubData):
            parents.append(input_record(e.key, e.role, e.data.hub, hub=True, repo_type="dataset",
                                        requested_revision=e.data.revision))
            continue
        source = e.data.path if isinstance(e.data, FileData) else str(e.value)
        if ident.get("hub"):  # a model named by its Hub id
            parents.append(input_record(e.key, e.role, source, hub=True, repo_type="model"))
            continue
        parents.append(input_record(
            e.key, e.role, source, sha256=ident.get("sha256"), base_dir=base_dir,
            data_format=getattr(e.data, "format", None) if isinstance(e.data, FileData) else None,
            upstream=upstream_repo(source) if e.role == "model" else upstream_dataset(source)))
    return parents + endpoint_parents(p.node.config)


def external_record(x: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A kind's own extra input (``StepKind.external_inputs``: curate's source, evaluate's benchmark
    files) as a lineage record: its fingerprint identity (``revision``: a digest or the Hub revision
    asked for) split into honest fields."""
    from realchat.models.provenance import input_record

    x = dict(x)
    revision = str(x.pop("revision", None) or "")
    if x.get("format") == "hub":
        return input_record(x.get("key"), x.get("role", "dataset"), x["source"], hub=True, repo_type="dataset",
                            requested_revision=revision if revision and revision != "main" else None)
    return input_record(x.get("key"), x.get("role", "file"), x["source"], sha256=revision or None,
                        data_format=x.get("format"), upstream=x.get("repo"), base_dir=base_dir)


def endpoint_parents(config: Any) -> list[dict[str, Any]]:
    """The served models a step asked (answerer, intent summariser, judge, a served simulator or
    benchmark model): parents of what it wrote, as its inputs are, named by key path, model and the
    endpoint's address without credentials. Lineage only, not the fingerprint: a served model has no
    content identity RealChat could read (its name is what the server says it is)."""
    from pydantic import BaseModel

    from realchat.models import served_identity

    found: list[dict[str, Any]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, BaseModel):
            if getattr(value, "kind", None) == "openai" and getattr(value, "base_url", None):
                ident = served_identity(value)
                found.append({"key": key, "role": "endpoint", "source": ident["model"], "endpoint": ident["base_url"]})
                return
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{key}.{name}" if key else name)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")

    walk(config, "")
    return found


def manifest_for(loaded: LoadedRecipe, p: StepPlan, parents: list[dict[str, Any]],
                 extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": p.name,
        "kind": p.kind,
        "fingerprint": p.fingerprint,
        "recipe": loaded.name,
        "recipe_file": str(loaded.path),
        "recipe_sha256": loaded.sha256,
        "realchat_version": __version__,
        "python": platform.python_version(),
        "parents": parents,
        **extra,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def card_for(loaded: LoadedRecipe, graph: Graph, name: str, manifest: dict[str, Any],
             stats: dict[str, Any], published_as: str | None = None, repo_path: str | None = None) -> str:
    """The step's card from what is in its folder, with the evaluation figures of every evaluating
    step built on exactly this output."""
    from realchat.hub.cards import CardInput, render_card
    from realchat.hub.publish import repo_id, resolve_parents

    node = graph.nodes[name]
    kind = registry.get(node.kind)
    sections = []
    for child in graph.children(name):
        child_kind = registry.get(graph.nodes[child].kind)
        child_dir = step_dir(loaded.run_root, loaded.name, child)
        cm = read_manifest(child_dir)
        if cm and any(pp.get("step") == name and pp.get("fingerprint") == manifest.get("fingerprint")
                      for pp in cm.get("parents") or []):
            sections.append(child_kind.section_for_parent(read_stats(child_dir), name, repo_id(loaded, child)))
    return render_card(CardInput(
        recipe_name=loaded.name, description=loaded.recipe.description, step=name, kind=node.kind,
        card=kind.card, license=node.config.license, manifest={**manifest, "parents": resolve_parents(
            loaded, manifest.get("parents") or [])},
        stats=stats, excerpt=loaded.excerpt(name), evaluation="\n".join(s for s in sections if s),
        repo=published_as or repo_id(loaded, name), repo_path=repo_path, extra=kind.card_context(stats),
        metadata={**kind.card_metadata(stats), "license_name": node.config.license_name,
                  "license_link": node.config.license_link}))


def inputs_unchanged(loaded: LoadedRecipe, p: StepPlan, ctx: StepContext) -> None:
    """Fail when a file the step read was changed or replaced after it was planned: its fingerprint,
    manifest and card name the sha256 taken at plan time, so an output made from other bytes must not
    be written under them. Read again after the step ran (a digest is re-read only when the file's
    inode, size or times changed); the work folder goes too, since its parts came from the new bytes."""
    from realchat.engine.fingerprint import external_identity

    planned = {x.get("key", "extra"): x for x in p.external}
    now = {x.get("key", "extra"): x for x in registry.get(p.kind).external_inputs(p.node.config, loaded.base_dir)}
    for e in p.node.inputs:
        if not e.step:
            planned[e.key], now[e.key] = p.identities[e.key], external_identity(e, loaded.base_dir)
    for key, was in planned.items():
        if now.get(key) != was:
            shutil.rmtree(ctx.work_dir(), ignore_errors=True)
            digest = lambda ident: str((ident or {}).get("revision") or (ident or {}).get("sha256") or "?").removeprefix(  # noqa: E731
                "sha256:")[:12]
            raise RecipeError(f"{was.get('source') or was.get('ref') or key} changed while step {p.name} ran "
                              f"(sha256 {digest(was)}… when planned, {digest(now.get(key))}… now): the output "
                              "was made from data its manifest and card would not name; nothing was written",
                              file=str(loaded.path), field=f"steps.{p.name}.{key}",
                              hint="rerun once the file no longer changes: the step is planned on its new content")


def build_step(loaded: LoadedRecipe, graph: Graph, p: StepPlan, ctx: StepContext) -> dict[str, Any]:
    """Run one step into its atomic output; its work folder (checkpoints, part files) is kept for a
    resume until the output is in place, then removed."""
    from realchat.hub.cards import license_text, sample_records

    kind = registry.get(p.kind)
    with atomic_output(p.output) as tmp:
        try:
            result = kind.run(ctx, tmp)
        finally:
            ctx.close()  # the step's engines stop and free the GPU for the next step
        inputs_unchanged(loaded, p, ctx)
        write_json(tmp / STATS, result.stats)
        if result.manifest.get("configs"):  # one record of each config, for the card
            result.manifest.setdefault("samples", sample_records(tmp, result.manifest["configs"]))
        manifest = manifest_for(loaded, p, lineage(p, loaded.base_dir), result.manifest)
        atomic_write_text(tmp / RECIPE_COPY, loaded.as_published())
        config = loaded.config(p.name)
        if config.license == "other" and not config.license_link:  # the link the card's metadata gives
            atomic_write_text(tmp / "LICENSE.md", license_text(loaded.name, p.name, manifest.get("parents") or []))
        (tmp / "README.md").write_text(card_for(loaded, graph, p.name, manifest, result.stats))
        write_json(tmp / MANIFEST, manifest)  # last: its presence marks the output complete
    shutil.rmtree(ctx.work_dir(), ignore_errors=True)
    return result.stats


def why_not_built(loaded: LoadedRecipe, step: str, fingerprint: str) -> str:
    """Why a parent counts as not built: never built, or built at another fingerprint (a ``--set`` on
    it, an edit of the recipe, a changed input or RealChat version), naming the config keys that
    differ from the recipe copy in its output where there are any."""
    import yaml

    folder = step_dir(loaded.run_root, loaded.name, step)
    built = read_manifest(folder)
    if built is None:
        return f"{step} has no finished output in {folder}"
    was = str(built.get("fingerprint", "?"))[:12]
    try:
        old = (yaml.safe_load((folder / RECIPE_COPY).read_text(encoding="utf-8")) or {}).get("steps", {}).get(step)
    except (OSError, yaml.YAMLError, AttributeError):
        old = None
    keys = _changed_keys(old, (loaded.data.get("steps") or {}).get(step), f"steps.{step}") if isinstance(old, dict) else []
    because = (f": {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''} changed" if keys
               else " (its config is the same: an input of it, or the RealChat version, changed)")
    return (f"{step} is built at fingerprint {was}, but this recipe (with its --set overrides) gives "
            f"{fingerprint[:12]}{because}")


def _changed_keys(old: Any, new: Any, path: str) -> list[str]:
    """Key paths whose values differ between two config mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in _changed_keys(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [path]


# -- the whole build --------------------------------------------------------------------------------


def build(loaded: LoadedRecipe, *, only: list[str] | None = None, start: str | None = None, force: bool = False,
          push: bool = True, console: Console | None = None, show_progress: bool = True,
          progress_interval_s: float | None = None, wait_s: float = 0.0,
          on_built: Callable[[StepPlan, dict[str, Any]], None] | None = None) -> list[StepPlan]:
    """Build what is not done (``force``: the selected steps anyway), holding the run folder's lock."""
    from realchat.hub.publish import needs_publish

    console = console or Console(stderr=True)
    graph = graph_of(loaded, only, start)
    ranks.start()
    if not ranks.is_main():
        return follow_main(loaded, graph, only=only, start=start)

    def log(m: str) -> None:
        console.print(f"[cyan]publish[/cyan] {m}")

    with run_lock(recipe_dir(loaded.run_root, loaded.name), wait_s, log=console.print):
        plans = plan(loaded, graph)
        fps = {p.name: p.fingerprint for p in plans}
        chosen = select(plans, graph, only, start)
        check_launch(loaded, [c for c in chosen if force or not c.done])
        fresh_start(loaded, chosen, force)
        chosen_names = {c.name for c in chosen}
        for p in chosen:
            missing = [q for q in p.parents if q not in chosen_names
                       and not is_done(step_dir(loaded.run_root, loaded.name, q), fps[q])]
            if missing:
                ranks.share(None)  # the other ranks of a launch stop too
                raise RecipeError(f"step {p.name} needs {', '.join(missing)} built first"
                                  + "".join(f"; {why_not_built(loaded, q, fps[q])}" for q in missing),
                                  file=str(loaded.path),
                                  hint=f"run without --only, or with --from {missing[0]}")
            built, refreshed = False, []
            if p.done and not force:
                ranks.share((p.name, False))
                console.print(f"[green]✓[/green] {p.name}: up to date ({p.output}, fingerprint {p.fingerprint[:12]})")
            else:
                ranks.share((p.name, True))
                console.rule(f"step {p.name} ({p.kind})")
                ctx = StepContext(loaded, p.node, p.fingerprint, console=console, show_progress=show_progress,
                                  progress_interval_s=progress_interval_s)
                stats = build_step(loaded, graph, p, ctx)
                p.done = built = True
                if on_built:
                    on_built(p, stats)
                refreshed = refresh_parent_cards(loaded, graph, p)
            if push and loaded.recipe.publish.push:
                if built or needs_publish(loaded, p.name, p.fingerprint, p.parents):
                    publish(loaded, graph, p.name, log=log)
                for parent in refreshed:
                    publish(loaded, graph, parent, log=log)
            ranks.barrier()  # the other ranks go on once this step is written and published
    return chosen


def follow_main(loaded: LoadedRecipe, graph: Graph, *, only: list[str] | None = None,
                start: str | None = None) -> list[StepPlan]:
    """A rank other than the main one in a multi-process launch (:mod:`realchat.engine.ranks`): take
    no lock, write nothing; for each step the main builds, join it when its kind runs on every rank
    (training, into a scratch folder), then wait until the main has written and published it."""
    import tempfile

    chosen = select(plan(loaded, graph), graph, only, start)
    quiet = Console(stderr=True, quiet=True)
    for p in chosen:
        decision = ranks.share(None)
        if decision is None:  # the main process stopped on an error it reports
            break
        name, run = decision
        if name != p.name:
            raise RuntimeError(f"rank {ranks.rank()}: the main process builds {name}, this one planned {p.name}")
        kind = registry.get(p.kind)
        if run and kind.every_rank:
            ctx = StepContext(loaded, p.node, p.fingerprint, console=quiet, show_progress=False)
            with tempfile.TemporaryDirectory(prefix=f"realchat-rank{ranks.rank()}-") as scratch:
                try:
                    kind.run(ctx, Path(scratch))
                finally:
                    ctx.close()
        ranks.barrier()
    return chosen


def refresh_parent_cards(loaded: LoadedRecipe, graph: Graph, p: StepPlan) -> list[str]:
    """Re-render the cards of ``p``'s finished parents whose cards show ``p``'s figures (an evaluation
    adds its tables to the cards of the datasets and models it evaluated); returns their names."""
    kind = registry.get(p.kind)
    if not kind.shows_in_parent_cards:
        return []
    done = []
    for parent in p.parents:
        folder = step_dir(loaded.run_root, loaded.name, parent)
        m = read_manifest(folder)
        if m is None:
            continue
        card = card_for(loaded, graph, parent, m, read_stats(folder))
        atomic_write_text(folder / "README.md", card)
        done.append(parent)
    return done


def publish(loaded: LoadedRecipe, graph: Graph, name: str, log: Any = print) -> dict[str, Any]:
    """Publish a finished step to the recipe's target, its card naming where its parents went."""
    from realchat.hub.publish import publish_step

    folder = step_dir(loaded.run_root, loaded.name, name)
    m = read_manifest(folder) or {}

    def render(repo: str, rel: str | None) -> str:
        return card_for(loaded, graph, name, m, read_stats(folder), published_as=repo, repo_path=rel)

    return publish_step(loaded, name, folder, render, log)


def push(loaded: LoadedRecipe, steps: list[str] | None = None, log: Any = print,
         wait_s: float = 0.0) -> list[dict[str, Any]]:
    """Publish finished steps (all that are finished, or those named), under the run folder's lock
    (waiting up to ``wait_s`` seconds for a build that holds it)."""
    from realchat.hub.publish import PublishError

    graph = graph_of(loaded, check=False)  # publishing reads finished outputs: nothing is run or fetched
    with run_lock(recipe_dir(loaded.run_root, loaded.name), wait_s, log=log):
        plans = {p.name: p for p in plan(loaded, graph)}
        names = steps or [n for n in graph.order if plans[n].done]
        for n in names:
            if n not in plans:
                raise PublishError(f"--step {n!r}: no such step in the recipe (steps: {', '.join(plans)})")
            if not plans[n].done:
                raise PublishError(f"step {n} is not built (or its recipe changed): run `realchat build` first")
        return [publish(loaded, graph, n, log) for n in names]
