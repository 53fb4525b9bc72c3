"""vLLM engine bookkeeping (realchat.models.engines) with a fake engine class in vLLM's place: vLLM needs a
GPU and is not installable here, so what is tested is RealChat's own logic (one engine per model, the
memory split, shutdown order, the seed), not vLLM."""

from __future__ import annotations

import pytest
import yaml

from realchat.models import engines as engines_module
from realchat.models.backends import VLLMBackend, VLLMModel
from realchat.models.engines import Engines, EngineSpec, split_memory


class FakeLLM:
    """Records how it was made and stopped, as vllm.LLM would be."""

    made: list["FakeLLM"] = []
    log: list[str] = []
    tokenizer = None  # a real one (the tiny ChatML tokenizer): the backend reads its chat format

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.stopped = False
        FakeLLM.made.append(self)
        FakeLLM.log.append(f"start {kwargs['model']} {kwargs['gpu_memory_utilization']}")

    def get_tokenizer(self):
        return FakeLLM.tokenizer

    def shutdown(self):
        assert not self.stopped, "stopped twice"
        self.stopped = True
        FakeLLM.log.append(f"stop {self.kwargs['model']}")


@pytest.fixture
def fake(monkeypatch, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    FakeLLM.made, FakeLLM.log = [], []
    FakeLLM.tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    monkeypatch.setattr(engines_module, "vllm_factory", lambda **kw: FakeLLM(**kw))
    monkeypatch.setattr(engines_module, "free_gpu_memory", lambda: FakeLLM.log.append("free"))
    return FakeLLM


def test_split_memory_rule():
    assert split_memory({"a": 0.9}) == {"a": 0.9}
    assert split_memory({"a": 0.9, "b": 0.9}) == {"a": 0.45, "b": 0.45}
    assert split_memory({"a": 0.9, "b": 0.6}) == {"a": 0.45, "b": 0.3}
    assert split_memory({}) == {}


def test_same_model_for_both_roles_is_one_engine_stopped_after_its_last_user(fake):
    pool = Engines()
    cfg = VLLMBackend(model="m")
    simulator = VLLMModel(cfg, "/models/a", engines=pool, seed=7)
    answerer = VLLMModel(cfg, "/models/a", engines=pool, seed=7)
    assert len(fake.made) == 1 and simulator.llm is answerer.llm
    assert fake.made[0].kwargs == {"model": "/models/a", "tensor_parallel_size": 1, "dtype": "auto",
                                   "gpu_memory_utilization": 0.9, "seed": 7}  # the recipe's seed reaches vLLM
    simulator.close()
    assert not fake.made[0].stopped  # the answerer still uses it
    answerer.close()
    answerer.close()  # twice is harmless
    assert fake.log == ["start /models/a 0.9", "stop /models/a", "free"]


def test_two_models_declared_together_split_the_gpu_from_the_first_engine(fake):
    pool = Engines()
    a, b = EngineSpec("/models/a"), EngineSpec("/models/b", gpu_memory_utilization=0.8)
    pool.expect([a, b])
    ea = pool.acquire(a)
    assert ea.kwargs["gpu_memory_utilization"] == 0.45  # leaves room for b before b exists
    eb = pool.acquire(b)
    assert eb.kwargs["gpu_memory_utilization"] == 0.4
    pool.close()  # the step ends: newest first, then the GPU freed once
    assert fake.log == ["start /models/a 0.45", "start /models/b 0.4", "stop /models/b", "stop /models/a", "free"]
    assert pool.running == 0


def test_an_engine_stopped_between_measures_frees_the_gpu_for_the_next(fake):
    pool = Engines()
    first = pool.acquire(EngineSpec("/models/a"))
    pool.release(EngineSpec("/models/a"))
    second = pool.acquire(EngineSpec("/models/judge"))
    assert first.stopped and not second.stopped
    assert second.kwargs["gpu_memory_utilization"] == 0.9  # alone again: the whole share
    assert fake.log == ["start /models/a 0.9", "stop /models/a", "free", "start /models/judge 0.9"]


def test_a_step_context_shares_splits_and_closes(fake, make_recipe, write_json_array, sharegpt_records,
                                                 tiny_model_dir):
    """Through the engine's StepContext as a simulate step uses it: both roles on vLLM with different models
    are declared together (0.45 each), the same model twice is one engine, and closing the context (what
    build_step does when the step ends, also on failure) stops them all."""
    from realchat.engine.build import graph_of, plan
    from realchat.engine.context import StepContext
    from realchat.recipe.load import load_recipe

    src = write_json_array(sharegpt_records[:5])
    path = make_recipe(src, name="vl")
    doc = yaml.safe_load(path.read_text())
    other = tiny_model_dir.parent / "other-model"
    if not other.exists():
        import shutil

        shutil.copytree(tiny_model_dir, other)
    doc["seed"] = 11
    doc["steps"]["sim"] = {"kind": "simulate", "simulator": "usergpt", "mode": "free", "conversations": 2,
                           "simulator_backend": {"kind": "vllm", "model": str(tiny_model_dir)},
                           "answerer": {"kind": "vllm", "model": str(other)}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    loaded = load_recipe(path)
    p = next(x for x in plan(loaded, graph_of(loaded)) if x.name == "sim")
    ctx = StepContext(loaded, p.node, p.fingerprint, show_progress=False)
    cfg = ctx.config
    sim = ctx.open_backend(cfg.simulator_backend, "simulator_backend")
    answerer = ctx.open_backend(cfg.answerer, "answerer")
    again = ctx.open_backend(cfg.answerer, "answerer")
    assert [e.kwargs["gpu_memory_utilization"] for e in fake.made] == [0.45, 0.45]
    assert again.llm is answerer.llm and sim.llm is not answerer.llm
    assert {e.kwargs["seed"] for e in fake.made} == {11}
    ctx.close()
    assert all(e.stopped for e in fake.made) and fake.log[-1] == "free" and fake.log.count("free") == 1
