"""RealChat's built-in chat templates mark each assistant turn with ``{% generation %}``: a model
published with one gives transformers' assistant mask, so a downstream ``assistant_only_loss=True``
(TRL) trains on it. The markers change no rendered character, and RealChat's own probing of the
template (turn ends, stop strings) is what it was. Real tokenizers of each family (tests/families.py)."""

from __future__ import annotations

import re

import pytest

from realchat.models.chat_formats import BUILTIN_TEMPLATES, ChatFormat

#: A real tokenizer for each built-in template (the family whose format it is).
TOKENIZER_OF = {"vicuna": "llama-base", "llama-2": "llama-2", "mistral": "mistral", "chatml": "chatml",
                "llama-3": "llama-3", "gemma": "gemma", "phi-3": "chatml"}
CONVERSATION = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi, how can I help?"},
                {"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "No jokes today."}]
MARKERS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def _runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, m in zip(ids, mask):
        if m and (not runs or runs[-1][-1] is None):
            runs.append([])
        if m:
            runs[-1].append(i)
        elif runs and runs[-1] and runs[-1][-1] is not None:
            runs[-1].append(None)  # type: ignore[arg-type]
    return [[i for i in r if i is not None] for r in runs]


def test_every_builtin_template_marks_its_assistant_turns():
    assert set(TOKENIZER_OF) == set(BUILTIN_TEMPLATES)
    for name, text in BUILTIN_TEMPLATES.items():
        assert len(re.findall(r"\{% generation %\}", text)) == 1 == len(re.findall(r"\{% endgeneration %\}", text)), name


@pytest.mark.parametrize("template", list(BUILTIN_TEMPLATES))
def test_assistant_mask_of_a_saved_tokenizer(template, family_models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_models(TOKENIZER_OF[template]))
    tok.chat_template = BUILTIN_TEMPLATES[template]
    tok.save_pretrained(tmp_path / "published")  # as the sft step saves it into the model folder
    tok = AutoTokenizer.from_pretrained(tmp_path / "published")

    # the markers change no character of the rendering
    plain = tok.apply_chat_template(CONVERSATION, tokenize=False, chat_template=MARKERS.sub("", tok.chat_template))
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == plain

    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    runs = _runs(out["input_ids"], out["assistant_masks"])
    assert len(runs) == 2, (template, runs)  # one run per assistant turn, nothing else
    fmt = ChatFormat.of(tok)
    ends = fmt.stop_strings("assistant")
    for run, answer in zip(runs, ("Hi, how can I help?", "No jokes today.")):
        text = tok.decode(run)
        assert answer in text and "Hello" not in text and "joke" not in text.replace("jokes", ""), (template, text)
        assert any(text.rstrip().endswith(e.strip()) for e in ends if e.strip()), (template, text, ends)  # learns to stop
    unmasked = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if not m])
    assert "Hello there" in unmasked and "Tell me a joke" in unmasked and "jokes today" not in unmasked


def test_trl_assistant_only_loss_trains_on_a_published_template(family_models, tmp_path):
    """Downstream: TRL's SFTTrainer with ``assistant_only_loss=True`` on a model folder saved with a
    built-in template starts and takes its steps, with loss only on the assistant's tokens."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    folder = family_models("llama-3")  # saved with RealChat's llama-3 template
    tok = AutoTokenizer.from_pretrained(folder)
    assert "{% generation %}" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(folder)
    data = datasets.Dataset.from_list([{"messages": CONVERSATION}] * 4)
    args = SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, max_steps=2,
                     per_device_train_batch_size=2, report_to="none", save_strategy="no", logging_steps=1,
                     use_cpu=True, disable_tqdm=True, max_length=128)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    row = trainer.train_dataset[0]
    # TRL turns the template's assistant mask into labels (-100 elsewhere) or keeps it as a column
    mask = row["assistant_masks"] if "assistant_masks" in row else [label != -100 for label in row["labels"]]
    kept = [i for i, m in zip(row["input_ids"], mask) if m]
    assert "No jokes today." in tok.decode(kept) and "Tell me a joke" not in tok.decode(kept)
    result = trainer.train()
    assert trainer.state.global_step == 2 and result.training_loss > 0
